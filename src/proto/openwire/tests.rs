use super::*;
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::codec::Decoder;

/// The WireFormatInfo a Debian ActiveMQ 5.17.2 broker sent the moment a socket opened.
const BROKER_WIRE_FORMAT_INFO: &str = "00000152014163746976654d510000000c01000001400000000d0011\
537461636b5472616365456e61626c65640101000f506c6174666f726d44657461696c730900044a617661000c4361\
636865456e61626c6564010100115463704e6f44656c6179456e61626c65640101001253697a655072656669784469\
7361626c656401000009436163686553697a650500000400000c50726f76696465724e616d650900084163746976\
654d5100145469676874456e636f64696e67456e61626c65640101000c4d61784672616d6553697a6506000000000640\
000000154d6178496e61637469766974794475726174696f6e06000000000000753000204d6178496e616374697669\
74794475726174696f6e496e6974616c44656c617906000000000000271000134d61784672616d6553697a65456e61\
626c65640101000f50726f766964657256657273696f6e090006352e31372e32";

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn decode_all(
    codec: &mut OpenWireCodec,
    src: &mut BytesMut,
) -> Result<Vec<Command>, OpenWireError> {
    let mut commands = Vec::new();
    while let Some(command) = codec.decode(src)? {
        commands.push(command);
    }
    Ok(commands)
}

/// Every command in `wire`, which must be consumed whole.
fn decode(wire: &[u8]) -> Result<Vec<Command>, OpenWireError> {
    let mut src = BytesMut::from(wire);
    let commands = decode_all(&mut OpenWireCodec::default(), &mut src)?;
    assert!(src.is_empty(), "left over: {src:?}");
    Ok(commands)
}

fn decode_one(wire: &[u8]) -> Command {
    match decode(wire).map(|mut commands| (commands.len(), commands.pop())) {
        Ok((1, Some(command))) => command,
        other => panic!("expected one command from {wire:02x?}, got {other:?}"),
    }
}

fn encode(command: &Command) -> Vec<u8> {
    let mut dst = BytesMut::new();
    command.encode(&mut dst).unwrap();
    dst.to_vec()
}

fn header(command_id: i32, response_required: bool) -> Header {
    Header {
        command_id,
        response_required,
    }
}

#[test]
fn decodes_the_wire_format_info_a_real_broker_sends() {
    let Command::WireFormatInfo(info) = decode_one(&hex(BROKER_WIRE_FORMAT_INFO)) else {
        panic!("not a WireFormatInfo");
    };
    assert_eq!(info.version, 12);
    assert_eq!(info.properties.len(), 13);
    assert!(info.flag("TightEncodingEnabled"));
    assert!(info.flag("CacheEnabled"));
    assert!(!info.flag("SizePrefixDisabled"));
    assert_eq!(info.properties["CacheSize"], Property::Int(1024));
    assert_eq!(
        info.properties["MaxInactivityDuration"],
        Property::Long(30_000)
    );
    assert_eq!(info.number("MaxFrameSize"), 104_857_600);
    assert_eq!(
        info.properties["ProviderVersion"],
        Property::String("5.17.2".into())
    );
}

#[test]
fn negotiates_down_to_what_tether_offers() {
    let Command::WireFormatInfo(broker) = decode_one(&hex(BROKER_WIRE_FORMAT_INFO)) else {
        panic!("not a WireFormatInfo");
    };
    let ours = WireFormatInfo::tether(DEFAULT_MAX_FRAME_SIZE, Duration::from_secs(30));
    let negotiated = ours.negotiate(&broker);
    assert_eq!(
        negotiated,
        Negotiated {
            version: 12,
            tight_encoding: false,
            cache: false,
            size_prefix_disabled: false,
            max_inactivity: Duration::from_secs(30),
            max_inactivity_initial_delay: Duration::from_secs(10),
            max_frame_size: DEFAULT_MAX_FRAME_SIZE as u64,
        }
    );
    assert_eq!(negotiated.unsupported(), None);
    // The same either way round.
    assert_eq!(broker.negotiate(&ours), negotiated);
}

#[test]
fn a_missing_property_is_false_or_zero() {
    // The smallest WireFormatInfo a broker accepts: version 12, no property map.
    let minimal = hex("0000000e014163746976654d510000000c00");
    let Command::WireFormatInfo(info) = decode_one(&minimal) else {
        panic!("not a WireFormatInfo");
    };
    assert_eq!(
        info,
        WireFormatInfo {
            version: 12,
            properties: BTreeMap::new()
        }
    );
    let ours = WireFormatInfo::tether(DEFAULT_MAX_FRAME_SIZE, Duration::from_secs(30));
    let negotiated = ours.negotiate(&info);
    assert_eq!(negotiated.max_inactivity, Duration::ZERO);
    assert_eq!(negotiated.max_frame_size, 0);
    assert!(!negotiated.tight_encoding && !negotiated.cache);

    let old = WireFormatInfo { version: 6, ..info };
    assert!(ours.negotiate(&old).unsupported().is_some());
    let mut tight = WireFormatInfo::tether(DEFAULT_MAX_FRAME_SIZE, Duration::ZERO);
    tight
        .properties
        .insert("TightEncodingEnabled".into(), Property::Bool(true));
    let mut broker_tight = tight.clone();
    broker_tight.version = 11;
    assert_eq!(tight.negotiate(&broker_tight).version, 11);
    assert!(tight.negotiate(&broker_tight).unsupported().is_some());
}

#[test]
fn tether_sends_each_option_with_the_type_java_casts_it_to() {
    let ours = WireFormatInfo::tether(1 << 20, Duration::from_secs(30));
    assert_eq!(ours.version, VERSION);
    let p = &ours.properties;
    assert_eq!(p["MaxInactivityDuration"], Property::Long(30_000));
    assert_eq!(
        p["MaxInactivityDurationInitalDelay"],
        Property::Long(10_000)
    );
    assert_eq!(p["MaxFrameSize"], Property::Long(1 << 20));
    assert_eq!(p["CacheSize"], Property::Int(0));
    assert_eq!(p["TightEncodingEnabled"], Property::Bool(false));
    assert_eq!(p["CacheEnabled"], Property::Bool(false));
    let wire = encode(&Command::WireFormatInfo(ours.clone()));
    assert_eq!(&wire[4..13], b"\x01ActiveMQ");
    assert_eq!(decode_one(&wire), Command::WireFormatInfo(ours));
}

#[test]
fn decodes_a_connection_control_built_by_hand() {
    let brokers = b"tcp://127.0.0.1:61717,tcp://127.0.0.1:61716";
    let mut body = vec![18]; // type
    body.extend(7i32.to_be_bytes()); // commandId
    body.push(0); // responseRequired
    body.extend([0, 0, 1, 0, 0]); // close, exit, faultTolerant, resume, suspend
    body.push(1); // connectedBrokers present
    body.extend((brokers.len() as u16).to_be_bytes());
    body.extend(brokers);
    body.push(0); // no reconnectTo
    body.push(1); // rebalanceConnection
    body.push(1); // token present
    body.extend(2i32.to_be_bytes());
    body.extend([0xab, 0xcd]);
    let mut wire = (body.len() as i32).to_be_bytes().to_vec();
    wire.extend(&body);

    let expected = ConnectionControl {
        header: header(7, false),
        fault_tolerant: true,
        connected_brokers: Some("tcp://127.0.0.1:61717,tcp://127.0.0.1:61716".into()),
        rebalance_connection: true,
        token: Some(vec![0xab, 0xcd]),
        ..ConnectionControl::default()
    };
    assert_eq!(
        decode_one(&wire),
        Command::ConnectionControl(expected.clone())
    );
    assert_eq!(encode(&Command::ConnectionControl(expected)), wire);
}

#[test]
fn a_body_longer_than_its_fields_is_read_up_to_them() {
    // As a newer broker that adds a field at the end would send it.
    let mut wire = encode(&Command::KeepAliveInfo(header(3, true)));
    wire.extend([9, 9, 9]);
    wire[3] += 3;
    assert_eq!(decode_one(&wire), Command::KeepAliveInfo(header(3, true)));
}

#[test]
fn encodes_connection_info_in_the_order_activemq_reads_it() {
    let info = ConnectionInfo {
        header: header(1, true),
        connection_id: Some("ID:c".into()),
        client_id: Some("t".into()),
        manageable: true,
        fault_tolerant: true,
        ..ConnectionInfo::default()
    };
    let wire = encode(&Command::ConnectionInfo(info.clone()));
    #[rustfmt::skip]
    let expected: Vec<u8> = [
        &[3][..],                        // type
        &1i32.to_be_bytes(), &[1],       // commandId, responseRequired
        &[1, 120, 1, 0, 4], b"ID:c",     // ConnectionId: notnull, type, string present, length
        &[1, 0, 1], b"t",                // clientId
        &[0, 0, 0],                      // password, userName, brokerPath
        &[0, 1, 0, 1, 0],                // brokerMasterConnector, manageable, clientMaster,
                                         // faultTolerant, failoverReconnect
        &[0],                            // clientIp
    ]
    .concat();
    assert_eq!(&wire[4..], &expected[..]);
    assert_eq!(wire[..4], (expected.len() as i32).to_be_bytes());
    assert_eq!(decode_one(&wire), Command::ConnectionInfo(info));
}

#[test]
fn strings_are_modified_utf8() {
    assert_eq!(encode_java_utf("a\0b"), b"a\xc0\x80b");
    // U+1F600 as the two surrogates D83D DE00, three bytes each.
    assert_eq!(encode_java_utf("😀"), b"\xed\xa0\xbd\xed\xb8\x80");
    assert_eq!(
        decode_java_utf(b"\xed\xa0\xbd\xed\xb8\x80").as_deref(),
        Some("😀")
    );
    assert_eq!(decode_java_utf(b"a\xc0\x80b").as_deref(), Some("a\0b"));
    assert_eq!(decode_java_utf("é😀".as_bytes()).as_deref(), Some("é😀"));
    // A lone surrogate and a stray continuation byte.
    assert_eq!(decode_java_utf(b"\xed\xa0\xbd"), None);
    assert_eq!(decode_java_utf(b"\x80"), None);
    assert_eq!(decode_java_utf(b"\xe0\x80"), None);
}

#[test]
fn the_frame_size_is_capped_before_buffering() {
    let mut codec = OpenWireCodec::new(1000);
    let mut src = BytesMut::from(&1001i32.to_be_bytes()[..]);
    let error = codec.decode(&mut src).unwrap_err();
    assert!(matches!(
        error,
        OpenWireError::FrameTooLarge {
            size: 1001,
            max: 1000
        }
    ));
    assert!(src.capacity() < 1000, "reserved {}", src.capacity());

    for bad in [0i32, -1, i32::MIN] {
        let mut src = BytesMut::from(&bad.to_be_bytes()[..]);
        assert!(matches!(
            codec.decode(&mut src),
            Err(OpenWireError::BadFrameSize(_))
        ));
    }
}

#[test]
fn unknown_commands_are_skipped_by_their_size() {
    let mut wire = vec![0, 0, 0, 4, 2, 0xde, 0xad, 0xbe];
    wire.extend(encode(&Command::KeepAliveInfo(header(0, false))));
    let commands = decode(&wire).unwrap();
    assert_eq!(
        commands,
        vec![
            Command::Unknown {
                kind: 2,
                body: Bytes::from_static(&[0xde, 0xad, 0xbe])
            },
            Command::KeepAliveInfo(header(0, false)),
        ]
    );
    assert_eq!(encode(&commands[0]), &wire[..8]);
}

#[test]
fn errors_name_what_was_wrong() {
    let mut bad_magic = hex("0000000e014163746976654d510000000c00");
    bad_magic[6] = b'x';
    assert!(
        decode(&bad_magic)
            .unwrap_err()
            .to_string()
            .contains("magic")
    );

    let cut = encode(&Command::KeepAliveInfo(header(1, false)));
    let mut short = cut[..cut.len() - 1].to_vec();
    short[3] -= 1;
    assert_eq!(
        decode(&short).unwrap_err().to_string(),
        "KeepAliveInfo ends inside responseRequired"
    );

    let too_long = "x".repeat(70_000);
    let control = Command::ConnectionControl(ConnectionControl {
        connected_brokers: Some(too_long),
        ..ConnectionControl::default()
    });
    let mut dst = BytesMut::from(&b"kept"[..]);
    assert!(matches!(
        control.encode(&mut dst),
        Err(OpenWireError::TooLong {
            field: "connectedBrokers",
            ..
        })
    ));
    assert_eq!(&dst[..], b"kept");
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9:/.,_-]{0,40}",
        any::<String>(),
        Just("nul\0inside".to_string()),
    ]
}

fn property() -> impl Strategy<Value = Property> {
    let leaf = prop_oneof![
        Just(Property::Null),
        any::<bool>().prop_map(Property::Bool),
        any::<i8>().prop_map(Property::Byte),
        any::<u16>().prop_map(Property::Char),
        any::<i16>().prop_map(Property::Short),
        any::<i32>().prop_map(Property::Int),
        any::<i64>().prop_map(Property::Long),
        // NaN would not equal itself after the round trip.
        (proptest::num::f64::NORMAL | proptest::num::f64::ZERO).prop_map(Property::Double),
        (proptest::num::f32::NORMAL | proptest::num::f32::ZERO).prop_map(Property::Float),
        text().prop_map(Property::String),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Property::Bytes),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::btree_map(text(), inner.clone(), 0..4).prop_map(Property::Map),
            proptest::collection::vec(inner, 0..4).prop_map(Property::List),
        ]
    })
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text())
}

fn arb_header() -> impl Strategy<Value = Header> {
    (any::<i32>(), any::<bool>()).prop_map(|(command_id, response_required)| Header {
        command_id,
        response_required,
    })
}

fn command() -> impl Strategy<Value = Command> {
    let wire_format = (
        any::<i32>(),
        proptest::collection::btree_map(text(), property(), 0..6),
    )
        .prop_map(|(version, properties)| {
            Command::WireFormatInfo(WireFormatInfo {
                version,
                properties,
            })
        });
    let connection_info = (
        arb_header(),
        (opt_text(), opt_text(), opt_text(), opt_text()),
        proptest::option::of(proptest::collection::vec(opt_text(), 0..3)),
        any::<[bool; 5]>(),
        opt_text(),
    )
        .prop_map(|(header, (id, client, password, user), path, flags, ip)| {
            Command::ConnectionInfo(ConnectionInfo {
                header,
                connection_id: id,
                client_id: client,
                password,
                user_name: user,
                broker_path: path,
                broker_master_connector: flags[0],
                manageable: flags[1],
                client_master: flags[2],
                fault_tolerant: flags[3],
                failover_reconnect: flags[4],
                client_ip: ip,
            })
        });
    let connection_control = (
        arb_header(),
        any::<[bool; 6]>(),
        opt_text(),
        opt_text(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
    )
        .prop_map(|(header, flags, brokers, reconnect_to, token)| {
            Command::ConnectionControl(ConnectionControl {
                header,
                close: flags[0],
                exit: flags[1],
                fault_tolerant: flags[2],
                resume: flags[3],
                suspend: flags[4],
                connected_brokers: brokers,
                reconnect_to,
                rebalance_connection: flags[5],
                token,
            })
        });
    let exception = proptest::option::of(
        (opt_text(), opt_text()).prop_map(|(class, message)| BrokerException { class, message }),
    );
    prop_oneof![
        wire_format,
        connection_info,
        connection_control,
        arb_header().prop_map(Command::KeepAliveInfo),
        (arb_header(), any::<i32>()).prop_map(|(header, correlation_id)| Command::Response {
            header,
            correlation_id
        }),
        (arb_header(), any::<i32>(), exception).prop_map(|(header, correlation_id, exception)| {
            Command::ExceptionResponse {
                header,
                correlation_id,
                exception,
            }
        }),
        // Types tether does not decode, whatever their body.
        (
            any::<u8>().prop_filter("a known type", |k| ![1, 3, 10, 18, 30, 31].contains(k)),
            proptest::collection::vec(any::<u8>(), 0..16)
        )
            .prop_map(|(kind, body)| Command::Unknown {
                kind,
                body: body.into()
            }),
    ]
}

proptest! {
    #[test]
    fn encode_then_decode_gives_the_same_commands(commands in proptest::collection::vec(command(), 1..5)) {
        let mut wire = BytesMut::new();
        for command in &commands {
            command.encode(&mut wire).unwrap();
        }
        prop_assert_eq!(decode(&wire).unwrap(), commands);
    }

    #[test]
    fn frames_split_anywhere_decode_the_same(commands in proptest::collection::vec(command(), 1..4)) {
        let mut wire = BytesMut::new();
        for command in &commands {
            command.encode(&mut wire).unwrap();
        }
        for split in 0..=wire.len() {
            let mut codec = OpenWireCodec::default();
            let mut src = BytesMut::from(&wire[..split]);
            let mut decoded = decode_all(&mut codec, &mut src).unwrap();
            src.extend_from_slice(&wire[split..]);
            decoded.extend(decode_all(&mut codec, &mut src).unwrap());
            prop_assert!(src.is_empty());
            prop_assert_eq!(&decoded, &commands, "split at {}", split);
        }
    }

    #[test]
    fn a_frame_cut_short_is_incomplete_until_it_is_whole(command in command()) {
        let wire = encode(&command);
        for end in 0..wire.len() {
            let mut src = BytesMut::from(&wire[..end]);
            prop_assert!(OpenWireCodec::default().decode(&mut src).unwrap().is_none());
        }
    }

    #[test]
    fn a_size_that_cuts_the_fields_short_is_an_error(command in command(), cut in 1usize..64) {
        let wire = encode(&command);
        let body = wire.len() - 4;
        if cut < body {
            let mut short = ((body - cut) as i32).to_be_bytes().to_vec();
            short.extend(&wire[4..wire.len() - cut]);
            // Every known command ends in a field it cannot do without; an unknown one is opaque.
            match (&command, decode(&short)) {
                (Command::Unknown { .. }, result) => prop_assert!(result.is_ok()),
                (_, result) => prop_assert!(result.is_err(), "{:?} decoded from {:02x?}", result, short),
            }
        }
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut src = BytesMut::from(&bytes[..]);
        let _ = decode_all(&mut OpenWireCodec::new(4096), &mut src);
    }

    #[test]
    fn garbage_bodies_of_known_types_never_panic(
        kind in prop_oneof![Just(1u8), Just(3), Just(10), Just(18), Just(30), Just(31)],
        body in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut wire = ((body.len() + 1) as i32).to_be_bytes().to_vec();
        wire.push(kind);
        wire.extend(&body);
        let _ = decode(&wire);
    }

    #[test]
    fn any_string_survives_modified_utf8(text in any::<String>()) {
        prop_assert_eq!(decode_java_utf(&encode_java_utf(&text)), Some(text));
    }
}
