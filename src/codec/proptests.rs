//! Property tests: every packet of every protocol version survives encode → decode unchanged,
//! and arbitrary bytes never panic the decoder.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use super::*;

fn mqtt_str() -> impl Strategy<Value = MqttStr> {
    "[a-zA-Z0-9 é/_-]{0,12}".prop_map(MqttStr::from)
}

fn topic_name() -> impl Strategy<Value = MqttStr> {
    "[a-z0-9$]{1,4}(/[a-z0-9]{0,4}){0,3}".prop_map(MqttStr::from)
}

fn topic_filter() -> impl Strategy<Value = MqttStr> {
    prop_oneof![
        topic_name(),
        Just(MqttStr::from("#")),
        "[a-z]{1,3}/\\+(/[a-z]{1,3})?".prop_map(MqttStr::from),
        "[a-z]{1,3}(/[a-z]{1,3})?/#".prop_map(MqttStr::from),
        "\\$share/[a-z]{1,3}/[a-z]{1,3}(/\\+)?".prop_map(MqttStr::from),
    ]
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn version() -> impl Strategy<Value = ProtocolVersion> {
    prop_oneof![
        Just(ProtocolVersion::V3_1),
        Just(ProtocolVersion::V3_1_1),
        Just(ProtocolVersion::V5)
    ]
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

/// Any properties at all; [`restrict`] then keeps those the packet allows.
fn any_properties() -> impl Strategy<Value = Properties> {
    let group_a = (
        option::of(0u8..=1),
        option::of(any::<u32>()),
        option::of(mqtt_str()),
        option::of(topic_name()),
        option::of(binary()),
        vec(1u32..=MAX_SUBSCRIPTION_IDENTIFIER, 0..3),
        option::of(any::<u32>()),
        option::of(mqtt_str()),
        option::of(any::<u16>()),
    );
    let group_b = (
        option::of(mqtt_str()),
        option::of(binary()),
        option::of(any::<bool>()),
        option::of(any::<u32>()),
        option::of(any::<bool>()),
        option::of(mqtt_str()),
        option::of(mqtt_str()),
        option::of(mqtt_str()),
        option::of(1u16..),
    );
    let group_c = (
        option::of(any::<u16>()),
        option::of(1u16..),
        option::of(prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce)]),
        option::of(any::<bool>()),
        vec((mqtt_str(), mqtt_str()), 0..3),
        option::of(1u32..),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
    );
    (group_a, group_b, group_c).prop_map(|(a, b, c)| {
        Properties::from(PropertyFields {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            content_type: a.2,
            response_topic: a.3,
            correlation_data: a.4,
            subscription_identifiers: a.5,
            session_expiry_interval: a.6,
            assigned_client_identifier: a.7,
            server_keep_alive: a.8,
            authentication_method: b.0,
            authentication_data: b.1,
            request_problem_information: b.2,
            will_delay_interval: b.3,
            request_response_information: b.4,
            response_information: b.5,
            server_reference: b.6,
            reason_string: b.7,
            receive_maximum: b.8,
            topic_alias_maximum: c.0,
            topic_alias: c.1,
            maximum_qos: c.2,
            retain_available: c.3,
            user_properties: c.4,
            maximum_packet_size: c.5,
            wildcard_subscription_available: c.6,
            subscription_identifier_available: c.7,
            shared_subscription_available: c.8,
        })
    })
}

fn keep<T>(allowed: bool, value: Option<T>) -> Option<T> {
    if allowed {
        value
    } else {
        None
    }
}

/// Keeps only the properties `context` allows (MQTT 5.0 table 2-4), with its repeat rules.
fn restrict(p: Properties, context: PropertyContext) -> Properties {
    use PropertyContext::*;
    let is = |allowed: &[PropertyContext]| allowed.contains(&context);
    let message = is(&[Publish, Will]);
    let p = p.into_fields();
    let mut subscription_identifiers = p.subscription_identifiers;
    if !is(&[Publish, Subscribe]) {
        subscription_identifiers.clear();
    }
    if context == Subscribe {
        subscription_identifiers.truncate(1);
    }
    Properties::from(PropertyFields {
        payload_format_indicator: keep(message, p.payload_format_indicator),
        message_expiry_interval: keep(message, p.message_expiry_interval),
        content_type: keep(message, p.content_type),
        response_topic: keep(message, p.response_topic),
        correlation_data: keep(message, p.correlation_data),
        subscription_identifiers,
        session_expiry_interval: keep(
            is(&[Connect, ConnAck, Disconnect]),
            p.session_expiry_interval,
        ),
        assigned_client_identifier: keep(is(&[ConnAck]), p.assigned_client_identifier),
        server_keep_alive: keep(is(&[ConnAck]), p.server_keep_alive),
        authentication_method: keep(is(&[Connect, ConnAck, Auth]), p.authentication_method),
        authentication_data: keep(is(&[Connect, ConnAck, Auth]), p.authentication_data),
        request_problem_information: keep(is(&[Connect]), p.request_problem_information),
        will_delay_interval: keep(is(&[Will]), p.will_delay_interval),
        request_response_information: keep(is(&[Connect]), p.request_response_information),
        response_information: keep(is(&[ConnAck]), p.response_information),
        server_reference: keep(is(&[ConnAck, Disconnect]), p.server_reference),
        reason_string: keep(
            is(&[ConnAck, Ack, SubAck, UnsubAck, Disconnect, Auth]),
            p.reason_string,
        ),
        receive_maximum: keep(is(&[Connect, ConnAck]), p.receive_maximum),
        topic_alias_maximum: keep(is(&[Connect, ConnAck]), p.topic_alias_maximum),
        topic_alias: keep(is(&[Publish]), p.topic_alias),
        maximum_qos: keep(is(&[ConnAck]), p.maximum_qos),
        retain_available: keep(is(&[ConnAck]), p.retain_available),
        user_properties: p.user_properties,
        maximum_packet_size: keep(is(&[Connect, ConnAck]), p.maximum_packet_size),
        wildcard_subscription_available: keep(is(&[ConnAck]), p.wildcard_subscription_available),
        subscription_identifier_available: keep(
            is(&[ConnAck]),
            p.subscription_identifier_available,
        ),
        shared_subscription_available: keep(is(&[ConnAck]), p.shared_subscription_available),
    })
}

fn props_for(version: ProtocolVersion, context: PropertyContext) -> Properties {
    Properties::default().clone_if(version.is_v5(), context)
}

trait CloneIf {
    fn clone_if(self, keep: bool, context: PropertyContext) -> Properties;
}

impl CloneIf for Properties {
    fn clone_if(self, keep: bool, context: PropertyContext) -> Properties {
        if keep {
            restrict(self, context)
        } else {
            Properties::default()
        }
    }
}

fn reason_in(context: ReasonContext) -> impl Strategy<Value = ReasonCode> {
    let codes: Vec<ReasonCode> = (0..=255u8)
        .filter_map(ReasonCode::from_u8)
        .filter(|code| code.allowed_in(context))
        .collect();
    proptest::sample::select(codes)
}

fn packet_id() -> impl Strategy<Value = u16> {
    1u16..
}

/// A packet that `version` can express exactly, paired with that version.
fn packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    (version(), any_properties(), any_properties()).prop_flat_map(|(version, props, will_props)| {
        let v5 = version.is_v5();
        let p = move |context| props.clone().clone_if(v5, context);
        let will_p = will_props.clone_if(v5, PropertyContext::Will);
        let connect = (
            any::<bool>(),
            any::<u16>(),
            mqtt_str(),
            option::of((topic_name(), binary(), qos(), any::<bool>())),
            option::of(mqtt_str()),
            option::of(binary()),
        )
            .prop_map({
                let properties = p(PropertyContext::Connect);
                move |(clean_start, keep_alive, client_id, will, username, password)| {
                    let password = if username.is_none() && !v5 {
                        None
                    } else {
                        password
                    };
                    Packet::Connect(Box::new(Connect {
                        protocol: version,
                        clean_start,
                        keep_alive,
                        client_id,
                        will: will.map(|(topic, payload, qos, retain)| LastWill {
                            topic,
                            payload,
                            qos,
                            retain,
                            properties: will_p.clone(),
                        }),
                        username,
                        password,
                        properties: properties.clone(),
                    }))
                }
            });
        let connack_reasons = if v5 {
            reason_in(ReasonContext::ConnAck).boxed()
        } else {
            (0u8..=5)
                .prop_filter_map("v3", ReasonCode::from_v3_connack)
                .boxed()
        };
        let connack = (any::<bool>(), connack_reasons).prop_map({
            let properties = p(PropertyContext::ConnAck);
            move |(present, reason)| {
                Packet::ConnAck(ConnAck {
                    session_present: present && reason == ReasonCode::Success,
                    reason,
                    properties: properties.clone(),
                })
            }
        });
        let publish = (
            any::<bool>(),
            qos(),
            any::<bool>(),
            topic_name(),
            packet_id(),
            binary(),
        )
            .prop_map({
                let properties = p(PropertyContext::Publish);
                move |(dup, qos, retain, topic, id, payload)| {
                    let zero = qos == QoS::AtMostOnce;
                    Packet::Publish(Publish {
                        dup: dup && !zero,
                        qos,
                        retain,
                        topic,
                        packet_id: if zero { 0 } else { id },
                        properties: properties.clone(),
                        payload,
                    })
                }
            });
        let ack = |context: ReasonContext| {
            let reasons = if v5 {
                reason_in(context).boxed()
            } else {
                Just(ReasonCode::Success).boxed()
            };
            let properties = p(PropertyContext::Ack);
            (packet_id(), reasons).prop_map(move |(packet_id, reason)| Ack {
                packet_id,
                reason,
                properties: properties.clone(),
            })
        };
        let options = (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(
            move |(qos, no_local, retain_as_published, handling)| {
                if !v5 {
                    return SubscriptionOptions::with_qos(qos);
                }
                SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling: match handling {
                        0 => RetainHandling::SendOnSubscribe,
                        1 => RetainHandling::SendIfNew,
                        _ => RetainHandling::DoNotSend,
                    },
                }
            },
        );
        let subscribe = (packet_id(), vec((topic_filter(), options), 1..4)).prop_map({
            let properties = p(PropertyContext::Subscribe);
            move |(packet_id, filters)| {
                let filters = filters
                    .into_iter()
                    .map(|(filter, mut options)| {
                        if filter.starts_with("$share/") {
                            options.no_local = false;
                        }
                        (filter, options)
                    })
                    .collect();
                Packet::Subscribe(Subscribe {
                    packet_id,
                    properties: properties.clone(),
                    filters,
                })
            }
        });
        let suback_reason = if v5 {
            reason_in(ReasonContext::SubAck).boxed()
        } else {
            proptest::sample::select(vec![
                ReasonCode::Success,
                ReasonCode::GrantedQos1,
                ReasonCode::GrantedQos2,
                ReasonCode::UnspecifiedError,
            ])
            .boxed()
        };
        let suback = (packet_id(), vec(suback_reason, 0..4)).prop_map({
            let properties = p(PropertyContext::SubAck);
            move |(packet_id, reasons)| {
                Packet::SubAck(SubAck {
                    packet_id,
                    properties: properties.clone(),
                    reasons,
                })
            }
        });
        let unsubscribe = (packet_id(), vec(topic_filter(), 1..4)).prop_map({
            let properties = p(PropertyContext::Unsubscribe);
            move |(packet_id, filters)| {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    properties: properties.clone(),
                    filters,
                })
            }
        });
        let unsuback_reasons = if v5 {
            vec(reason_in(ReasonContext::UnsubAck), 0..4).boxed()
        } else {
            Just(Vec::new()).boxed()
        };
        let unsuback = (packet_id(), unsuback_reasons).prop_map({
            let properties = p(PropertyContext::UnsubAck);
            move |(packet_id, reasons)| {
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    properties: properties.clone(),
                    reasons,
                })
            }
        });
        let disconnect_reason = if v5 {
            reason_in(ReasonContext::Disconnect).boxed()
        } else {
            Just(ReasonCode::Success).boxed()
        };
        let disconnect = disconnect_reason.prop_map({
            let properties = p(PropertyContext::Disconnect);
            move |reason| {
                Packet::Disconnect(Disconnect {
                    reason,
                    properties: properties.clone(),
                })
            }
        });
        let mut choices: Vec<BoxedStrategy<Packet>> = vec![
            connect.boxed(),
            connack.boxed(),
            publish.boxed(),
            ack(ReasonContext::PubAckOrRec)
                .prop_map(Packet::PubAck)
                .boxed(),
            ack(ReasonContext::PubAckOrRec)
                .prop_map(Packet::PubRec)
                .boxed(),
            ack(ReasonContext::PubRelOrComp)
                .prop_map(Packet::PubRel)
                .boxed(),
            ack(ReasonContext::PubRelOrComp)
                .prop_map(Packet::PubComp)
                .boxed(),
            subscribe.boxed(),
            suback.boxed(),
            unsubscribe.boxed(),
            unsuback.boxed(),
            Just(Packet::PingReq).boxed(),
            Just(Packet::PingResp).boxed(),
            disconnect.boxed(),
        ];
        if v5 {
            let properties = p(PropertyContext::Auth);
            choices.push(
                reason_in(ReasonContext::Auth)
                    .prop_map(move |reason| {
                        Packet::Auth(Auth {
                            reason,
                            properties: properties.clone(),
                        })
                    })
                    .boxed(),
            );
        }
        (Just(version), proptest::strategy::Union::new(choices))
    })
}

/// The decoder's view of a packet after a round trip: an ack, DISCONNECT or AUTH whose reason is
/// success and that has no properties has only one encoding (the short one), so equality is
/// exact. Nothing needs normalising.
fn round_trip(version: ProtocolVersion, packet: &Packet) -> Packet {
    let mut out = BytesMut::new();
    packet.encode(version, &mut out).expect("encodable packet");
    let len = out.len();
    let decoded = decode(&mut out, version, len)
        .expect("decodes")
        .expect("complete");
    assert!(out.is_empty());
    decoded
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decode_inverts_encode((version, packet) in packet()) {
        prop_assert_eq!(round_trip(version, &packet), packet);
    }

    #[test]
    fn any_split_point_is_incomplete_not_an_error((version, packet) in packet(), cut in any::<prop::sample::Index>()) {
        let mut out = BytesMut::new();
        packet.encode(version, &mut out).unwrap();
        let cut = cut.index(out.len());
        let mut partial = BytesMut::from(&out[..cut]);
        prop_assert_eq!(decode(&mut partial, version, usize::MAX), Ok(None));
        prop_assert_eq!(partial.len(), cut);
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..256), version in version()) {
        let mut buf = BytesMut::from(&bytes[..]);
        // Drain as many packets as decode; any error ends the stream as it would a connection.
        while let Ok(Some(_)) = decode(&mut buf, version, 128) {}
    }

    #[test]
    fn mutated_packets_never_panic((version, packet) in packet(), flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
        let mut out = BytesMut::new();
        packet.encode(version, &mut out).unwrap();
        for (index, byte) in flips {
            let at = index.index(out.len());
            out[at] = byte;
        }
        while let Ok(Some(_)) = decode(&mut out, version, usize::MAX) {}
    }
}

#[test]
fn props_for_drops_everything_before_v5() {
    assert!(props_for(ProtocolVersion::V3_1_1, PropertyContext::Publish).is_empty());
}
