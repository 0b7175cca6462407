//! Authentication and authorization with a password file and an ACL file (Mosquitto's
//! formats): CONNACK codes for bad credentials and anonymous clients, PUBLISH / SUBSCRIBE
//! denials in 3.1.1 and 5.0, no leak through `#` (retained messages included), wills, client
//! ids owned by users, max_keepalive, use_username_as_clientid.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use common::{connect_packet, publish_packet, will, Broker, Raw, QUIET, TIMEOUT};
use shardmq::auth::password::{PasswordFile, DEFAULT_ITERATIONS};
use shardmq::codec::{Ack, Connect, MqttStr, Packet, ProtocolVersion, QoS, ReasonCode};
use shardmq::config::Config;

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("shardmq-auth-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn password_file(users: &[(&str, &str)]) -> String {
    let mut file = PasswordFile::default();
    for (i, (user, password)) in users.iter().enumerate() {
        file.set(user, password.as_bytes(), DEFAULT_ITERATIONS, [i as u8; 12])
            .unwrap();
    }
    file.to_text()
}

const USERS: &[(&str, &str)] = &[
    ("alice", "alice-pw"),
    ("bob", "bob-pw"),
    ("carol", "carol-pw"),
];

const ACL: &str = "\
# anonymous clients: only this
topic read public/#

user alice
topic readwrite a/#
topic deny a/secret
topic write w/#

user bob
topic readwrite #

user carol
topic read #
topic deny secret/#

pattern readwrite clients/%c/#
";

/// A broker (2 shards) with the users above, and the ACL unless `acl` is false.
fn broker(dir: &TempDir, acl: bool, tweak: impl FnOnce(&mut Config)) -> Broker {
    let passwords = dir.file("passwd", &password_file(USERS));
    let acl_path = dir.file("acl", ACL);
    Broker::start_with(|config| {
        config.password_file = Some(passwords);
        if acl {
            config.acl_file = Some(acl_path);
        }
        tweak(config);
    })
}

fn login(client_id: &str, user: Option<&str>, password: Option<&str>, v5: bool) -> Connect {
    let mut connect = connect_packet(client_id, true);
    if v5 {
        connect.protocol = ProtocolVersion::V5;
    }
    connect.username = user.map(MqttStr::from);
    connect.password = password.map(|p| Bytes::copy_from_slice(p.as_bytes()));
    connect
}

fn user(broker: &Broker, shard: usize, client_id: &str, name: &str, v5: bool) -> Raw {
    let password = USERS.iter().find(|(u, _)| *u == name).unwrap().1;
    Raw::connect_with(
        broker.shard(shard),
        login(client_id, Some(name), Some(password), v5),
    )
    .0
}

/// The CONNACK reason, then the connection must close.
fn refused(broker: &Broker, shard: usize, connect: Connect) -> ReasonCode {
    let (mut raw, connack) = Raw::try_connect(broker.shard(shard), connect);
    raw.expect_closed(TIMEOUT);
    connack.reason
}

#[test]
fn credentials_are_checked() {
    let dir = TempDir::new("credentials");
    let broker = broker(&dir, false, |_| {});
    for v5 in [false, true] {
        // Our codec decodes 3.x return codes 4 and 5 (and only those) to 0x86 / 0x87.
        let wrong = login("c1", Some("alice"), Some("nope"), v5);
        assert_eq!(
            refused(&broker, 0, wrong),
            ReasonCode::BadUserNameOrPassword
        );
        let unknown = login("c2", Some("mallory"), Some("alice-pw"), v5);
        assert_eq!(
            refused(&broker, 1, unknown),
            ReasonCode::BadUserNameOrPassword
        );
        let no_password = login("c3", Some("alice"), None, v5);
        assert_eq!(
            refused(&broker, 0, no_password),
            ReasonCode::BadUserNameOrPassword
        );
        let anonymous = login("c4", None, None, v5);
        assert_eq!(refused(&broker, 1, anonymous), ReasonCode::NotAuthorized);
        let mut raw = user(&broker, 0, "c5", "alice", v5);
        raw.ping();
        raw.disconnect();
    }
    // The broker keeps serving after refusals.
    user(&broker, 1, "c6", "bob", false).ping();
}

#[test]
fn allow_anonymous_with_a_password_file() {
    let dir = TempDir::new("anonymous");
    let broker = broker(&dir, true, |config| config.allow_anonymous = Some(true));
    let (mut anonymous, _) = Raw::connect_with(broker.shard(0), login("anon", None, None, false));
    // Anonymous clients get the ACL's anonymous rules: public/# read only.
    assert_eq!(
        anonymous.subscribe(1, "public/#", QoS::AtMostOnce).reasons,
        vec![ReasonCode::Success]
    );
    assert_eq!(
        anonymous.subscribe(2, "a/#", QoS::AtMostOnce).reasons,
        vec![ReasonCode::UnspecifiedError]
    );
    // A wrong password is still refused.
    let wrong = login("c", Some("alice"), Some("nope"), false);
    assert_eq!(
        refused(&broker, 1, wrong),
        ReasonCode::BadUserNameOrPassword
    );
}

#[test]
fn publish_denied_3_1_1_is_acknowledged_and_dropped() {
    let dir = TempDir::new("pub3");
    let broker = broker(&dir, true, |_| {});
    let mut reader = user(&broker, 1, "reader", "bob", false);
    reader.subscribe(1, "#", QoS::AtLeastOnce);
    let mut alice = user(&broker, 0, "alice-1", "alice", false);
    // Denied: acknowledged (QoS 1 and 2 flows complete), never delivered.
    alice.publish("b/x", b"no", QoS::AtLeastOnce, false, 1);
    alice.publish("a/secret", b"no", QoS::ExactlyOnce, false, 2);
    alice.publish("b/y", b"no", QoS::AtMostOnce, false, 0);
    alice.ping();
    reader.expect_silence(QUIET);
    // Allowed ones go through.
    alice.publish("a/ok", b"yes", QoS::AtLeastOnce, false, 3);
    alice.publish("w/ok", b"yes", QoS::AtLeastOnce, false, 4);
    assert_eq!(reader.recv_publish().topic.as_str(), "a/ok");
    assert_eq!(reader.recv_publish().topic.as_str(), "w/ok");
    // The pattern rule: clients/<own client id>/...
    alice.publish("clients/alice-1/x", b"yes", QoS::AtLeastOnce, false, 5);
    assert_eq!(reader.recv_publish().topic.as_str(), "clients/alice-1/x");
    alice.publish("clients/other/x", b"no", QoS::AtLeastOnce, false, 6);
    reader.expect_silence(QUIET);
}

#[test]
fn publish_denied_5_0_gets_0x87() {
    let dir = TempDir::new("pub5");
    let broker = broker(&dir, true, |_| {});
    let mut reader = user(&broker, 0, "reader5", "bob", true);
    reader.subscribe(1, "#", QoS::AtLeastOnce);
    let mut alice = user(&broker, 1, "alice-5", "alice", true);
    alice.send(Packet::Publish(publish_packet(
        "b/x",
        b"no",
        QoS::AtLeastOnce,
        false,
        1,
    )));
    match alice.recv() {
        Packet::PubAck(ack) => assert_eq!(ack.reason, ReasonCode::NotAuthorized),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    alice.send(Packet::Publish(publish_packet(
        "a/secret",
        b"no",
        QoS::ExactlyOnce,
        false,
        2,
    )));
    match alice.recv() {
        Packet::PubRec(ack) => assert_eq!(ack.reason, ReasonCode::NotAuthorized),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // The refused QoS 2 packet id is free again at once.
    alice.send(Packet::Publish(publish_packet(
        "a/fine",
        b"yes",
        QoS::ExactlyOnce,
        false,
        2,
    )));
    match alice.recv() {
        Packet::PubRec(ack) => assert_ne!(ack.reason, ReasonCode::NotAuthorized, "{ack:?}"),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    alice.send(Packet::PubRel(Ack::new(2)));
    assert!(matches!(alice.recv(), Packet::PubComp(_)));
    let publish = reader.recv_publish();
    assert_eq!(publish.topic.as_str(), "a/fine");
    common::ack_publish(&mut reader, &publish);
    reader.expect_silence(QUIET);
}

#[test]
fn publish_through_a_topic_alias_is_checked_on_the_topic() {
    let dir = TempDir::new("alias");
    let broker = broker(&dir, true, |_| {});
    let mut alice = user(&broker, 0, "alice-alias", "alice", true);
    let mut first = publish_packet("a/aliased", b"1", QoS::AtLeastOnce, false, 1);
    first.properties.topic_alias = Some(1);
    alice.send(Packet::Publish(first));
    let mut again = publish_packet("", b"2", QoS::AtLeastOnce, false, 2);
    again.properties.topic_alias = Some(1);
    alice.send(Packet::Publish(again));
    for id in [1, 2] {
        match alice.recv() {
            Packet::PubAck(ack) => {
                assert_eq!(ack.packet_id, id);
                assert_ne!(ack.reason, ReasonCode::NotAuthorized, "{ack:?}");
            }
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
}

#[test]
fn subscribe_denied() {
    let dir = TempDir::new("sub");
    let broker = broker(&dir, true, |_| {});
    let mut alice3 = user(&broker, 0, "alice-s3", "alice", false);
    let suback = alice3.subscribe_many(
        1,
        &[
            ("a/#", QoS::AtLeastOnce),
            ("#", QoS::AtLeastOnce),
            ("w/x", QoS::AtMostOnce),
        ],
    );
    assert_eq!(
        suback.reasons,
        vec![
            ReasonCode::GrantedQos1,
            ReasonCode::UnspecifiedError, // 3.1.1: 0x80
            ReasonCode::UnspecifiedError, // write-only
        ]
    );
    let mut alice5 = user(&broker, 1, "alice-s5", "alice", true);
    let suback = alice5.subscribe_many(
        1,
        &[
            ("a/secret", QoS::AtMostOnce),
            ("$share/g/a/#", QoS::AtMostOnce),
            ("$share/g/b/#", QoS::AtMostOnce),
        ],
    );
    assert_eq!(
        suback.reasons,
        vec![
            ReasonCode::NotAuthorized,
            ReasonCode::Success,
            ReasonCode::NotAuthorized,
        ]
    );
}

/// carol may read everything but `secret/#`: her `#` subscription gets the rest, live and
/// retained, and never a secret.
#[test]
fn wildcard_subscription_does_not_leak_denied_topics() {
    let dir = TempDir::new("leak");
    let broker = broker(&dir, true, |_| {});
    let mut bob = user(&broker, 0, "bob-pub", "bob", false);
    bob.publish("secret/retained", b"s", QoS::AtLeastOnce, true, 1);
    bob.publish("open/retained", b"o", QoS::AtLeastOnce, true, 2);
    for shard in [0, 1] {
        let mut carol = user(&broker, shard, &format!("carol-{shard}"), "carol", false);
        assert_eq!(
            carol.subscribe(1, "#", QoS::AtLeastOnce).reasons,
            vec![ReasonCode::GrantedQos1]
        );
        let retained = carol.recv_publish();
        assert_eq!(retained.topic.as_str(), "open/retained");
        common::ack_publish(&mut carol, &retained);
        carol.expect_silence(QUIET);
        bob.publish("secret/live", b"s", QoS::AtLeastOnce, false, 3);
        bob.publish("open/live", b"o", QoS::AtLeastOnce, false, 4);
        let live = carol.recv_publish();
        assert_eq!(live.topic.as_str(), "open/live");
        common::ack_publish(&mut carol, &live);
        carol.expect_silence(QUIET);
        carol.disconnect();
    }
    // alice's `a/#` overlaps her `deny a/secret`: checked per message too.
    let mut alice = user(&broker, 1, "alice-leak", "alice", false);
    alice.subscribe(1, "a/#", QoS::AtMostOnce);
    bob.publish("a/secret", b"s", QoS::AtLeastOnce, false, 5);
    bob.publish("a/open", b"o", QoS::AtLeastOnce, false, 6);
    assert_eq!(alice.recv_publish().topic.as_str(), "a/open");
    alice.expect_silence(QUIET);
}

/// A reload replaces the ACL under connected clients: their next publishes are checked against
/// the new rules (what the connection prepared from the old ACL is not used with the new one).
#[test]
fn acl_reload_applies_to_connected_publishers() {
    let dir = TempDir::new("reload-pub");
    let mut broker = broker(&dir, true, |_| {});
    let mut alice = user(&broker, 0, "alice-reload", "alice", true);
    let mut packet_id = 0;
    let mut publish = |alice: &mut Raw, topic: &str| -> ReasonCode {
        packet_id += 1;
        alice.send(Packet::Publish(publish_packet(
            topic,
            b"x",
            QoS::AtLeastOnce,
            false,
            packet_id,
        )));
        match alice.recv() {
            Packet::PubAck(ack) => ack.reason,
            other => panic!("expected PUBACK, got {other:?}"),
        }
    };
    assert_ne!(publish(&mut alice, "a/x"), ReasonCode::NotAuthorized);
    assert_eq!(publish(&mut alice, "b/x"), ReasonCode::NotAuthorized);
    // alice's rules move to b/#, and her block is now the second one (a connection's prepared
    // part from the old file would point at carol's rules).
    dir.file(
        "acl",
        "user carol\ntopic read #\nuser alice\ntopic readwrite b/#\nuser bob\ntopic #\n",
    );
    broker.reload(|_| {});
    // Each shard applies the reload at its next tick.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while publish(&mut alice, "b/x") == ReasonCode::NotAuthorized {
        assert!(
            std::time::Instant::now() < deadline,
            "the reloaded ACL was not applied within 5 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(publish(&mut alice, "a/x"), ReasonCode::NotAuthorized);
    // A client connecting after the reload gets the same answers.
    let mut again = user(&broker, 1, "alice-after", "alice", true);
    assert_ne!(publish(&mut again, "b/y"), ReasonCode::NotAuthorized);
    assert_eq!(publish(&mut again, "a/y"), ReasonCode::NotAuthorized);
}

#[test]
fn will_is_checked_when_published() {
    let dir = TempDir::new("will");
    let broker = broker(&dir, true, |_| {});
    let mut reader = user(&broker, 1, "will-reader", "bob", false);
    reader.subscribe(1, "#", QoS::AtMostOnce);
    for (topic, delivered) in [("b/will", false), ("a/will", true)] {
        let mut connect = login(
            &format!("alice-will-{topic}"),
            Some("alice"),
            Some("alice-pw"),
            false,
        );
        connect.will = Some(will(topic, b"gone", QoS::AtMostOnce, false));
        let (alice, _) = Raw::connect_with(broker.shard(0), connect);
        alice.drop_socket();
        if delivered {
            assert_eq!(reader.recv_publish().topic.as_str(), topic);
        } else {
            reader.expect_silence(QUIET);
        }
    }
}

#[test]
fn client_ids_belong_to_users() {
    let dir = TempDir::new("owner");
    let broker = broker(&dir, false, |_| {});
    // alice's persistent session, live.
    let mut connect = login("shared-id", Some("alice"), Some("alice-pw"), false);
    connect.clean_start = false;
    let (mut alice, _) = Raw::connect_with(broker.shard(0), connect.clone());
    alice.subscribe(1, "t/#", QoS::AtLeastOnce);
    for shard in [0, 1] {
        for v5 in [false, true] {
            let mut thief = login("shared-id", Some("bob"), Some("bob-pw"), v5);
            thief.clean_start = false;
            assert_eq!(refused(&broker, shard, thief), ReasonCode::NotAuthorized);
        }
    }
    alice.ping();
    // Stored (offline) session: still alice's.
    alice.disconnect();
    let mut thief = login("shared-id", Some("bob"), Some("bob-pw"), false);
    thief.clean_start = true;
    assert_eq!(refused(&broker, 1, thief), ReasonCode::NotAuthorized);
    let mut bob = user(&broker, 1, "bob-feed", "bob", false);
    bob.publish("t/queued", b"q", QoS::AtLeastOnce, false, 1);
    // alice takes it back, with the message queued meanwhile.
    let (mut alice, connack) = Raw::connect_with(broker.shard(1), connect);
    assert!(connack.session_present);
    assert_eq!(alice.recv_publish().topic.as_str(), "t/queued");
}

#[test]
fn max_keepalive() {
    let broker = Broker::start_with(|config| config.max_keepalive = 10);
    // 5.0: more, or none, becomes the maximum (Server Keep Alive).
    for asked in [0u16, 11, 600] {
        let mut connect = connect_packet(&format!("ka5-{asked}"), true);
        connect.protocol = ProtocolVersion::V5;
        connect.keep_alive = asked;
        let (_raw, connack) = Raw::connect_with(broker.shard(0), connect);
        assert_eq!(
            connack.properties.server_keep_alive,
            Some(10),
            "asked {asked}"
        );
    }
    let mut connect = connect_packet("ka5-ok", true);
    connect.protocol = ProtocolVersion::V5;
    connect.keep_alive = 5;
    let (_raw, connack) = Raw::connect_with(broker.shard(0), connect);
    assert_eq!(connack.properties.server_keep_alive, None);
    // 3.x: more is refused (return code 2); 0 and up to the maximum are fine.
    let mut connect = connect_packet("ka3-more", true);
    connect.keep_alive = 11;
    assert_eq!(
        refused(&broker, 1, connect),
        ReasonCode::ClientIdentifierNotValid
    );
    for asked in [0u16, 10] {
        let mut connect = connect_packet(&format!("ka3-{asked}"), true);
        connect.keep_alive = asked;
        Raw::connect_with(broker.shard(1), connect).0.ping();
    }
}

#[test]
fn max_keepalive_is_enforced_for_5_0() {
    let broker = Broker::start_with(|config| config.max_keepalive = 1);
    let mut connect = connect_packet("ka5-silent", true);
    connect.protocol = ProtocolVersion::V5;
    connect.keep_alive = 0;
    let start = std::time::Instant::now();
    let (mut raw, connack) = Raw::connect_with(broker.shard(0), connect);
    assert_eq!(connack.properties.server_keep_alive, Some(1));
    raw.expect_closed(Duration::from_secs(4));
    assert!(
        start.elapsed() <= Duration::from_millis(3300),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn use_username_as_clientid() {
    let dir = TempDir::new("asid");
    let broker = broker(&dir, false, |config| {
        config.use_username_as_clientid = true;
        config.allow_anonymous = Some(true);
    });
    let mut connect = login("whatever", Some("alice"), Some("alice-pw"), false);
    connect.clean_start = false;
    let (raw, _) = Raw::connect_with(broker.shard(0), connect);
    raw.disconnect();
    // The session is alice's, whatever client id she gives.
    let mut connect = login("something-else", Some("alice"), Some("alice-pw"), false);
    connect.clean_start = false;
    let (_raw, connack) = Raw::connect_with(broker.shard(1), connect);
    assert!(connack.session_present);
    // Without a user name: refused.
    assert_eq!(
        refused(&broker, 0, login("anon", None, None, false)),
        ReasonCode::NotAuthorized
    );
}

/// rumqttc (a third-party client) sees the refusals as its own error types.
#[tokio::test]
async fn rumqttc_sees_the_refusals() {
    let dir = TempDir::new("rumqttc");
    let broker = broker(&dir, true, |_| {});
    let mut options = common::mqtt_options(broker.shard(0), "rq-wrong");
    options.set_credentials("alice", "wrong");
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let error = loop {
        match tokio::time::timeout(TIMEOUT, eventloop.poll())
            .await
            .expect("an answer")
        {
            Ok(_) => continue,
            Err(error) => break error,
        }
    };
    assert!(
        matches!(
            error,
            rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::BadUserNamePassword
            )
        ),
        "{error:?}"
    );
    drop(client);
    let mut options = common::mqtt_options(broker.shard(1), "rq-alice");
    options.set_credentials("alice", "alice-pw");
    let (alice, _) = common::Client::connect_with(options).await;
    let codes = alice.subscribe("b/#", rumqttc::QoS::AtLeastOnce).await;
    assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Failure]);
}

/// Failed logins are slowed down per address: each further failure from 127.0.0.1 within a
/// minute waits twice as long for its refusal (lower bounds only: a slow machine cannot break
/// them), a good login is not held back, and the delays are counted.
#[test]
fn failed_logins_are_slowed_down_per_address() {
    let dir = TempDir::new("slowdown");
    let broker = broker(&dir, false, |config| config.failed_login_delay_ms = 300);
    for (attempt, at_least_ms) in [300u64, 600, 1200].into_iter().enumerate() {
        let started = std::time::Instant::now();
        let wrong = login(
            &format!("guess-{attempt}"),
            Some("alice"),
            Some("guess"),
            true,
        );
        assert_eq!(
            refused(&broker, 0, wrong),
            ReasonCode::BadUserNameOrPassword
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(at_least_ms),
            "failure {attempt} refused after {waited:?}"
        );
    }
    // The right password still gets in, and others are served meanwhile.
    user(&broker, 0, "alice-ok", "alice", true).ping();
    common::wait_until(TIMEOUT, "the delays to be counted", || {
        broker
            .stats()
            .iter()
            .map(|s| s.failed_logins_delayed)
            .sum::<u64>()
            == 3
    });
}
