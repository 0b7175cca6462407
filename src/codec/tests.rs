//! Byte vectors worked out by hand from the OASIS MQTT 3.1.1 and 5.0 specifications.

use bytes::{Bytes, BytesMut};

use super::*;

const MAX: usize = 1 << 20;

fn decode_all(bytes: &[u8], version: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, MAX)?;
    if packet.is_some() {
        assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
    }
    Ok(packet)
}

fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    packet.encode(version, &mut out).expect("encode");
    out.to_vec()
}

/// Decodes `bytes`, checks the result, and checks that encoding gives the same bytes back.
fn check_exact(bytes: &[u8], version: ProtocolVersion, expected: Packet) {
    let packet = decode_all(bytes, version).unwrap().unwrap();
    assert_eq!(packet, expected);
    assert_eq!(encode(&packet, version), bytes);
}

#[test]
fn connect_v311_minimal() {
    let bytes = [
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00,
    ];
    let expected = Packet::Connect(Box::new(Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: true,
        keep_alive: 60,
        client_id: MqttStr::from(""),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }));
    check_exact(&bytes, ProtocolVersion::V3_1_1, expected);
}

#[test]
fn connect_v31_uses_mqisdp() {
    let bytes = [
        0x10, 0x10, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x00, 0x00, 0x0a, 0x00,
        0x02, b'i', b'd',
    ];
    let Packet::Connect(connect) = decode_all(&bytes, ProtocolVersion::V3_1_1)
        .unwrap()
        .unwrap()
    else {
        panic!("not a CONNECT")
    };
    assert_eq!(connect.protocol, ProtocolVersion::V3_1);
    assert!(!connect.clean_start);
    assert_eq!(connect.client_id, "id");
    assert_eq!(
        encode(&Packet::Connect(connect), ProtocolVersion::V3_1),
        bytes
    );
}

#[test]
fn connect_v5_with_properties_will_and_credentials() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x28,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05,
        0xee, // user name, password, will retain, will QoS 1, will, clean start
        0x00, 0x3c,
        0x05, 0x11, 0x00, 0x00, 0x00, 0x78, // session expiry 120
        0x00, 0x03, b'a', b'b', b'c', // client id
        0x05, 0x18, 0x00, 0x00, 0x00, 0x05, // will delay 5
        0x00, 0x01, b'w', // will topic
        0x00, 0x02, b'b', b'y', // will payload
        0x00, 0x01, b'u', // user name
        0x00, 0x01, b'p', // password
    ];
    let Packet::Connect(connect) = decode_all(&bytes, ProtocolVersion::V3_1_1)
        .unwrap()
        .unwrap()
    else {
        panic!("not a CONNECT")
    };
    assert_eq!(connect.protocol, ProtocolVersion::V5);
    assert_eq!(connect.properties.session_expiry_interval, Some(120));
    let will = connect.will.as_ref().unwrap();
    assert_eq!(will.topic, "w");
    assert_eq!(&will.payload[..], b"by");
    assert_eq!(will.qos, QoS::AtLeastOnce);
    assert!(will.retain);
    assert_eq!(will.properties.will_delay_interval, Some(5));
    assert_eq!(connect.username.as_deref(), Some("u"));
    assert_eq!(connect.password.as_deref(), Some(&b"p"[..]));
    assert_eq!(
        encode(&Packet::Connect(connect), ProtocolVersion::V5),
        bytes
    );
}

#[test]
fn connect_errors() {
    let base = |level: u8, flags: u8| {
        vec![
            0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', level, flags, 0x00, 0x3c, 0x00, 0x00,
        ]
    };
    assert_eq!(
        decode_all(&base(6, 0x02), ProtocolVersion::V3_1_1),
        Err(DecodeError::UnsupportedProtocolVersion(6))
    );
    assert_eq!(
        decode_all(&base(4, 0x03), ProtocolVersion::V3_1_1),
        Err(DecodeError::Malformed("reserved connect flag set"))
    );
    // Will QoS without the will flag.
    assert!(decode_all(&base(4, 0x0a), ProtocolVersion::V3_1_1).is_err());
    // Password without user name: refused in 3.1.1; the v5 packet would need properties, so
    // build it separately.
    assert!(decode_all(&base(4, 0x42), ProtocolVersion::V3_1_1).is_err());
    let v5 = [
        0x10, 0x0f, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x42, 0x00, 0x3c, 0x00, 0x00, 0x00,
        0x00, 0x00,
    ];
    let Packet::Connect(connect) = decode_all(&v5, ProtocolVersion::V3_1_1).unwrap().unwrap()
    else {
        panic!()
    };
    assert_eq!(connect.password.as_deref(), Some(&b""[..]));
    // Unknown protocol name.
    let mut bad_name = base(4, 0x02);
    bad_name[4] = b'X';
    assert!(matches!(
        decode_all(&bad_name, ProtocolVersion::V3_1_1),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn connack_both_versions() {
    check_exact(
        &[0x20, 0x02, 0x01, 0x00],
        ProtocolVersion::V3_1_1,
        Packet::ConnAck(ConnAck {
            session_present: true,
            ..Default::default()
        }),
    );
    check_exact(
        &[0x20, 0x02, 0x00, 0x05],
        ProtocolVersion::V3_1_1,
        Packet::ConnAck(ConnAck {
            reason: ReasonCode::NotAuthorized,
            ..Default::default()
        }),
    );
    let properties = Properties::from(PropertyFields {
        receive_maximum: Some(10),
        assigned_client_identifier: Some(MqttStr::from("x")),
        ..Default::default()
    });
    check_exact(
        &[
            0x20, 0x0a, 0x00, 0x00, 0x07, 0x12, 0x00, 0x01, b'x', 0x21, 0x00, 0x0a,
        ],
        ProtocolVersion::V5,
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties,
        }),
    );
    // A v5 reason code that CONNACK may not carry.
    assert!(decode_all(&[0x20, 0x03, 0x00, 0x8e, 0x00], ProtocolVersion::V5).is_err());
    // Session present with a refusal.
    assert!(decode_all(&[0x20, 0x02, 0x01, 0x05], ProtocolVersion::V3_1_1).is_err());
}

#[test]
fn publish_qos1_v311_and_zero_copy() {
    let bytes = [0x32, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0a, b'x'];
    let mut buf = BytesMut::from(&bytes[..]);
    let base = buf.as_ptr() as usize;
    let Some(Packet::Publish(publish)) = decode(&mut buf, ProtocolVersion::V3_1_1, MAX).unwrap()
    else {
        panic!("not a PUBLISH")
    };
    assert_eq!(publish.qos, QoS::AtLeastOnce);
    assert_eq!(publish.packet_id, 10);
    assert_eq!(publish.topic, "a/b");
    assert_eq!(&publish.payload[..], b"x");
    // The topic and payload point into the read buffer.
    assert_eq!(publish.topic.as_bytes().as_ptr() as usize, base + 4);
    assert_eq!(publish.payload.as_ptr() as usize, base + 9);
    assert_eq!(
        encode(&Packet::Publish(publish), ProtocolVersion::V3_1_1),
        bytes
    );
}

#[test]
fn publish_v5_empty_payload_and_flags() {
    check_exact(
        &[0x31, 0x06, 0x00, 0x03, b'a', b'/', b'b', 0x00],
        ProtocolVersion::V5,
        Packet::Publish(Publish {
            retain: true,
            topic: MqttStr::from("a/b"),
            ..Default::default()
        }),
    );
    // Empty topic with a topic alias is allowed in v5 only.
    let aliased = [0x30, 0x06, 0x00, 0x00, 0x03, 0x23, 0x00, 0x01];
    let Packet::Publish(publish) = decode_all(&aliased, ProtocolVersion::V5).unwrap().unwrap()
    else {
        panic!()
    };
    assert_eq!(publish.properties.topic_alias, Some(1));
    assert!(decode_all(&[0x30, 0x02, 0x00, 0x00], ProtocolVersion::V3_1_1).is_err());
    assert!(decode_all(&[0x30, 0x03, 0x00, 0x00, 0x00], ProtocolVersion::V5).is_err());
}

#[test]
fn publish_errors() {
    // QoS 3.
    assert!(matches!(
        decode_all(
            &[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01],
            ProtocolVersion::V3_1_1
        ),
        Err(DecodeError::Malformed(_))
    ));
    // Wildcards in a topic name.
    assert_eq!(
        decode_all(&[0x30, 0x03, 0x00, 0x01, b'#'], ProtocolVersion::V3_1_1),
        Err(DecodeError::TopicNameInvalid(
            core_router::topic::TopicError::WildcardInName
        ))
    );
    assert_eq!(
        decode_all(&[0x30, 0x03, 0x00, 0x01, b'#'], ProtocolVersion::V3_1_1)
            .unwrap_err()
            .reason_code(),
        ReasonCode::TopicNameInvalid
    );
    // Invalid UTF-8 in the topic.
    assert!(matches!(
        decode_all(
            &[0x30, 0x04, 0x00, 0x02, 0xc0, 0xaf],
            ProtocolVersion::V3_1_1
        ),
        Err(DecodeError::Malformed(_))
    ));
    // Packet identifier 0 with QoS 1.
    assert_eq!(
        decode_all(
            &[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
            ProtocolVersion::V3_1_1
        ),
        Err(DecodeError::Protocol("packet identifier 0"))
    );
    // DUP on QoS 0.
    assert!(decode_all(&[0x38, 0x03, 0x00, 0x01, b'a'], ProtocolVersion::V3_1_1).is_err());
    // Topic length past the end of the packet.
    assert!(decode_all(&[0x30, 0x03, 0x00, 0x05, b'a'], ProtocolVersion::V3_1_1).is_err());
}

#[test]
fn acks() {
    for (first, packet) in [
        (0x40u8, Packet::PubAck(Ack::new(10))),
        (0x50, Packet::PubRec(Ack::new(10))),
        (0x62, Packet::PubRel(Ack::new(10))),
        (0x70, Packet::PubComp(Ack::new(10))),
    ] {
        check_exact(
            &[first, 0x02, 0x00, 0x0a],
            ProtocolVersion::V3_1_1,
            packet.clone(),
        );
        // MQTT 5.0 short form: reason and properties omitted means success.
        check_exact(&[first, 0x02, 0x00, 0x0a], ProtocolVersion::V5, packet);
    }
    check_exact(
        &[0x40, 0x03, 0x00, 0x0a, 0x10],
        ProtocolVersion::V5,
        Packet::PubAck(Ack {
            packet_id: 10,
            reason: ReasonCode::NoMatchingSubscribers,
            properties: Properties::default(),
        }),
    );
    // Reason plus an empty property block decodes; the encoder then uses the short form.
    let packet = decode_all(&[0x40, 0x04, 0x00, 0x0a, 0x00, 0x00], ProtocolVersion::V5)
        .unwrap()
        .unwrap();
    assert_eq!(packet, Packet::PubAck(Ack::new(10)));
    // PUBREL must carry flags 0010.
    assert!(decode_all(&[0x60, 0x02, 0x00, 0x0a], ProtocolVersion::V3_1_1).is_err());
    // PUBCOMP may not carry "no matching subscribers".
    assert!(decode_all(&[0x70, 0x03, 0x00, 0x0a, 0x10], ProtocolVersion::V5).is_err());
}

#[test]
fn subscribe_family() {
    check_exact(
        &[0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'+', 0x01],
        ProtocolVersion::V3_1_1,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                MqttStr::from("a/+"),
                SubscriptionOptions::with_qos(QoS::AtLeastOnce),
            )],
        }),
    );
    let properties = Properties::from(PropertyFields {
        subscription_identifiers: vec![7],
        ..Default::default()
    });
    check_exact(
        &[
            0x82, 0x09, 0x00, 0x01, 0x02, 0x0b, 0x07, 0x00, 0x01, b'#', 0x2e,
        ],
        ProtocolVersion::V5,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties,
            filters: vec![(
                MqttStr::from("#"),
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            )],
        }),
    );
    // v5 option bits are reserved in 3.1.1.
    assert!(decode_all(
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x05],
        ProtocolVersion::V3_1_1
    )
    .is_err());
    // Retain handling 3.
    assert!(decode_all(
        &[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'#', 0x30],
        ProtocolVersion::V5
    )
    .is_err());
    // No topic filter at all.
    assert_eq!(
        decode_all(&[0x82, 0x02, 0x00, 0x01], ProtocolVersion::V3_1_1),
        Err(DecodeError::Protocol("SUBSCRIBE without a topic filter"))
    );
    // A misplaced wildcard.
    assert_eq!(
        decode_all(
            &[0x82, 0x07, 0x00, 0x01, 0x00, 0x02, b'a', b'#', 0x00],
            ProtocolVersion::V3_1_1
        )
        .unwrap_err()
        .reason_code(),
        ReasonCode::TopicFilterInvalid
    );
    // No local on a shared subscription.
    let mut shared = vec![0x82, 0x00, 0x00, 0x01, 0x00, 0x00, 0x0b];
    shared.extend_from_slice(b"$share/g/ab");
    shared.push(0x04);
    shared[1] = (shared.len() - 2) as u8;
    assert_eq!(
        decode_all(&shared, ProtocolVersion::V5),
        Err(DecodeError::Protocol("no local on a shared subscription"))
    );

    check_exact(
        &[0x90, 0x04, 0x00, 0x01, 0x01, 0x80],
        ProtocolVersion::V3_1_1,
        Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Properties::default(),
            reasons: vec![ReasonCode::GrantedQos1, ReasonCode::UnspecifiedError],
        }),
    );
    check_exact(
        &[0x90, 0x04, 0x00, 0x01, 0x00, 0xa2],
        ProtocolVersion::V5,
        Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Properties::default(),
            reasons: vec![ReasonCode::WildcardSubscriptionsNotSupported],
        }),
    );
    check_exact(
        &[0xa2, 0x07, 0x00, 0x02, 0x00, 0x03, b'a', b'/', b'b'],
        ProtocolVersion::V3_1_1,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            properties: Properties::default(),
            filters: vec![MqttStr::from("a/b")],
        }),
    );
    check_exact(
        &[0xb0, 0x02, 0x00, 0x02],
        ProtocolVersion::V3_1_1,
        Packet::UnsubAck(UnsubAck {
            packet_id: 2,
            ..Default::default()
        }),
    );
    check_exact(
        &[0xb0, 0x04, 0x00, 0x02, 0x00, 0x11],
        ProtocolVersion::V5,
        Packet::UnsubAck(UnsubAck {
            packet_id: 2,
            properties: Properties::default(),
            reasons: vec![ReasonCode::NoSubscriptionExisted],
        }),
    );
}

#[test]
fn ping_disconnect_auth() {
    check_exact(&[0xc0, 0x00], ProtocolVersion::V3_1_1, Packet::PingReq);
    check_exact(&[0xd0, 0x00], ProtocolVersion::V3_1_1, Packet::PingResp);
    check_exact(
        &[0xe0, 0x00],
        ProtocolVersion::V3_1_1,
        Packet::Disconnect(Disconnect::default()),
    );
    check_exact(
        &[0xe0, 0x02, 0x8e, 0x00],
        ProtocolVersion::V5,
        Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver)),
    );
    // A reason without a property length is valid input (3.14.2.2.1) and reads the same; we
    // always write the length (some clients need it).
    assert_eq!(
        decode_all(&[0xe0, 0x01, 0x8e], ProtocolVersion::V5)
            .unwrap()
            .unwrap(),
        Packet::Disconnect(Disconnect::new(ReasonCode::SessionTakenOver))
    );
    let properties = Properties::from(PropertyFields {
        session_expiry_interval: Some(0),
        ..Default::default()
    });
    check_exact(
        &[0xe0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x00],
        ProtocolVersion::V5,
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties,
        }),
    );
    check_exact(
        &[0xf0, 0x00],
        ProtocolVersion::V5,
        Packet::Auth(Auth::default()),
    );
    let properties = Properties::from(PropertyFields {
        authentication_method: Some(MqttStr::from("k")),
        ..Default::default()
    });
    check_exact(
        &[0xf0, 0x06, 0x18, 0x04, 0x15, 0x00, 0x01, b'k'],
        ProtocolVersion::V5,
        Packet::Auth(Auth {
            reason: ReasonCode::ContinueAuthentication,
            properties,
        }),
    );
    // AUTH does not exist in 3.1.1; PINGREQ has no body; DISCONNECT in 3.1.1 has no body.
    assert!(decode_all(&[0xf0, 0x00], ProtocolVersion::V3_1_1).is_err());
    assert!(decode_all(&[0xc0, 0x01, 0x00], ProtocolVersion::V3_1_1).is_err());
    assert!(decode_all(&[0xe0, 0x01, 0x00], ProtocolVersion::V3_1_1).is_err());
    assert!(Packet::Auth(Auth::default())
        .encode(ProtocolVersion::V3_1_1, &mut BytesMut::new())
        .is_err());
}

#[test]
fn fixed_header_rules() {
    // Packet type 0 is reserved.
    assert!(decode_all(&[0x00, 0x00], ProtocolVersion::V3_1_1).is_err());
    // Reserved flags on PINGREQ and SUBSCRIBE.
    assert!(decode_all(&[0xc1, 0x00], ProtocolVersion::V3_1_1).is_err());
    assert!(decode_all(&[0x80, 0x02, 0x00, 0x01], ProtocolVersion::V3_1_1).is_err());
    // Remaining length with a fifth byte.
    assert!(matches!(
        decode_all(
            &[0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
            ProtocolVersion::V3_1_1
        ),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn incomplete_frames_consume_nothing() {
    let bytes = [0x32, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0a, b'x'];
    for cut in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..cut]);
        assert_eq!(
            decode(&mut buf, ProtocolVersion::V3_1_1, MAX),
            Ok(None),
            "cut {cut}"
        );
        assert_eq!(buf.len(), cut);
    }
    // Two frames back to back come out one at a time.
    let mut buf = BytesMut::from(&[0xc0, 0x00, 0xd0, 0x00, 0xc0][..]);
    assert_eq!(
        decode(&mut buf, ProtocolVersion::V3_1_1, MAX),
        Ok(Some(Packet::PingReq))
    );
    assert_eq!(
        decode(&mut buf, ProtocolVersion::V3_1_1, MAX),
        Ok(Some(Packet::PingResp))
    );
    assert_eq!(decode(&mut buf, ProtocolVersion::V3_1_1, MAX), Ok(None));
    assert_eq!(buf.len(), 1);
}

#[test]
fn maximum_packet_size_is_checked_from_the_fixed_header() {
    // Announces 2,097,151 bytes of body but carries none: refused before buffering.
    let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0x7f][..]);
    assert_eq!(
        decode(&mut buf, ProtocolVersion::V3_1_1, 1024),
        Err(DecodeError::PacketTooLarge {
            size: 2_097_155,
            max: 1024
        })
    );
    // Exactly at the limit is fine.
    let mut buf = BytesMut::from(&[0xc0, 0x00][..]);
    assert_eq!(
        decode(&mut buf, ProtocolVersion::V3_1_1, 2),
        Ok(Some(Packet::PingReq))
    );
    let mut buf = BytesMut::from(&[0xc0, 0x00][..]);
    assert!(decode(&mut buf, ProtocolVersion::V3_1_1, 1).is_err());
}

#[test]
fn maximum_remaining_length_round_trips() {
    let payload = Bytes::from(vec![7u8; wire::MAX_VARINT as usize - 3]);
    let publish = Publish {
        topic: MqttStr::from("a"),
        payload,
        ..Default::default()
    };
    let mut out = BytesMut::new();
    Packet::Publish(publish.clone())
        .encode(ProtocolVersion::V3_1_1, &mut out)
        .unwrap();
    assert_eq!(&out[..5], &[0x30, 0xff, 0xff, 0xff, 0x7f]);
    let decoded = decode(&mut out, ProtocolVersion::V3_1_1, usize::MAX)
        .unwrap()
        .unwrap();
    assert_eq!(decoded, Packet::Publish(publish.clone()));
    // One byte more does not fit a remaining length.
    let mut too_big = publish;
    too_big.payload = Bytes::from(vec![7u8; wire::MAX_VARINT as usize - 2]);
    assert!(Packet::Publish(too_big)
        .encode(ProtocolVersion::V3_1_1, &mut BytesMut::new())
        .is_err());
}

#[test]
fn encoded_publish_matches_the_plain_encoder() {
    let properties = Properties::from(PropertyFields {
        message_expiry_interval: Some(30),
        user_properties: vec![(MqttStr::from("k"), MqttStr::from("v"))],
        ..Default::default()
    });
    let publish = Publish {
        topic: MqttStr::from("t/1"),
        payload: Bytes::from_static(b"hello"),
        properties,
        ..Default::default()
    };
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for retain in [false, true] {
                let encoded = EncodedPublish::new(&publish, version, qos, retain).unwrap();
                for (packet_id, dup) in [(1u16, false), (513, true)] {
                    let mut expected = publish.clone();
                    expected.qos = qos;
                    expected.retain = retain;
                    expected.dup = dup && qos != QoS::AtMostOnce;
                    expected.packet_id = if qos == QoS::AtMostOnce { 0 } else { packet_id };
                    let mut out = BytesMut::new();
                    encoded.write_to(&mut out, packet_id, dup);
                    assert_eq!(out.to_vec(), encode(&Packet::Publish(expected), version));
                    assert_eq!(out.len(), encoded.len());
                }
                // The payload is shared, not copied.
                assert_eq!(encoded.payload().as_ptr(), publish.payload.as_ptr());
            }
        }
    }
}

#[test]
fn v5_fields_are_dropped_for_v311() {
    let mut publish = Publish {
        topic: MqttStr::from("a"),
        ..Default::default()
    };
    publish.properties.content_type = Some(MqttStr::from("text/plain"));
    let bytes = encode(&Packet::Publish(publish), ProtocolVersion::V3_1_1);
    assert_eq!(bytes, [0x30, 0x03, 0x00, 0x01, b'a']);
    let nack = Packet::PubAck(Ack {
        packet_id: 3,
        reason: ReasonCode::NotAuthorized,
        properties: Properties::default(),
    });
    assert_eq!(
        encode(&nack, ProtocolVersion::V3_1_1),
        [0x40, 0x02, 0x00, 0x03]
    );
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::BadUserNameOrPassword,
        properties: Properties::default(),
    });
    assert_eq!(
        encode(&connack, ProtocolVersion::V3_1_1),
        [0x20, 0x02, 0x00, 0x04]
    );
}
