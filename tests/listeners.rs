//! Per-listener settings seen by clients (rumqttc, MQTT 3.1.1 and 5.0): `allow_anonymous`
//! overriding the broker-wide rule, and `mount_point` (Mosquitto's semantics: what a mounted
//! client publishes and subscribes is prefixed, what it receives has the prefix removed, it sees
//! nothing outside the prefix, and ACL rules apply to the full topic).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{mqtt_options, Broker, Client, QUIET, TIMEOUT};
use rumqttc::{QoS, SubscribeReasonCode};
use shardmq::auth::password::{PasswordFile, DEFAULT_ITERATIONS};
use shardmq::config::{Config, ListenerConfig};

const MOUNT: &str = "tenant/a/";

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("shardmq-listeners-{tag}-{}", std::process::id()));
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

/// A second loopback listener (index 1, after the `listen` address) set up by `tweak`.
fn extra_listener(tweak: impl FnOnce(&mut ListenerConfig)) -> ListenerConfig {
    let mut listener = ListenerConfig::mqtt("127.0.0.1:0".parse().unwrap());
    tweak(&mut listener);
    listener
}

/// The CONNACK code rumqttc (3.1.1) gets from `addr` for an anonymous client.
async fn v3_connack(addr: SocketAddr, client_id: &str) -> rumqttc::ConnectReturnCode {
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(mqtt_options(addr, client_id), 10);
    let event = tokio::time::timeout(TIMEOUT, eventloop.poll())
        .await
        .expect("an answer to CONNECT");
    match event {
        Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(connack))) => connack.code,
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => code,
        other => panic!("expected a CONNACK, got {other:?}"),
    }
}

/// The CONNACK code rumqttc (5.0) gets from `addr` for an anonymous client.
async fn v5_connack(
    addr: SocketAddr,
    client_id: &str,
) -> rumqttc::v5::mqttbytes::v5::ConnectReturnCode {
    let options = rumqttc::v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    let (_client, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 10);
    let event = tokio::time::timeout(TIMEOUT, eventloop.poll())
        .await
        .expect("an answer to CONNECT");
    match event {
        Ok(rumqttc::v5::Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(connack))) => {
            connack.code
        }
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
        other => panic!("expected a CONNACK, got {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn listener_allow_anonymous_overrides_the_broker_wide_rule() {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5;
    use rumqttc::ConnectReturnCode as V3;
    let dir = TempDir::new("anon");
    let mut users = PasswordFile::default();
    users
        .set("alice", b"alice-pw", DEFAULT_ITERATIONS, [7; 12])
        .unwrap();
    let passwords = dir.file("passwd", &users.to_text());
    // A password file: anonymous clients refused broker-wide, except on listener 1; listener 2
    // says no explicitly.
    let broker = Broker::start_with(|config| {
        config.password_file = Some(passwords);
        config.listener = vec![
            extra_listener(|l| l.allow_anonymous = Some(true)),
            extra_listener(|l| l.allow_anonymous = Some(false)),
        ];
    });
    let [closed, open, explicit_no] = broker.listen_addrs[..] else {
        panic!("three listeners: {:?}", broker.listen_addrs);
    };
    assert_eq!(v3_connack(closed, "anon-v3-a").await, V3::NotAuthorized);
    assert_eq!(v5_connack(closed, "anon-v5-a").await, V5::NotAuthorized);
    assert_eq!(v3_connack(open, "anon-v3-b").await, V3::Success);
    assert_eq!(v5_connack(open, "anon-v5-b").await, V5::Success);
    assert_eq!(
        v3_connack(explicit_no, "anon-v3-c").await,
        V3::NotAuthorized
    );
    // The listener setting is about anonymous clients only: credentials are still checked.
    let mut options = mqtt_options(open, "alice-1");
    options.set_credentials("alice", "wrong");
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    match tokio::time::timeout(TIMEOUT, eventloop.poll()).await {
        Ok(Err(rumqttc::ConnectionError::ConnectionRefused(code))) => {
            assert_eq!(code, V3::BadUserNamePassword)
        }
        other => panic!("{other:?}"),
    }
    let mut options = mqtt_options(closed, "alice-2");
    options.set_credentials("alice", "alice-pw");
    Client::connect_with(options).await;
    drop(broker);

    // Broker-wide yes, one listener says no.
    let broker = Broker::start_with(|config| {
        config.allow_anonymous = Some(true);
        config.listener = vec![extra_listener(|l| l.allow_anonymous = Some(false))];
    });
    let [open, closed] = broker.listen_addrs[..] else {
        panic!("two listeners: {:?}", broker.listen_addrs);
    };
    assert_eq!(v3_connack(open, "anon-v3-d").await, V3::Success);
    assert_eq!(v3_connack(closed, "anon-v3-e").await, V3::NotAuthorized);
    assert_eq!(v5_connack(closed, "anon-v5-e").await, V5::NotAuthorized);
}

/// A broker with a plain listener (`listen_addrs[0]`) and one mounted at [`MOUNT`]
/// (`listen_addrs[1]`).
fn mounted_broker(tweak: impl FnOnce(&mut Config)) -> Broker {
    Broker::start_with(|config| {
        config.listener = vec![extra_listener(|l| l.mount_point = Some(MOUNT.into()))];
        tweak(config);
    })
}

#[tokio::test(flavor = "current_thread")]
async fn mount_point_prefixes_what_a_client_sends_and_strips_what_it_receives() {
    let broker = mounted_broker(|_| {});
    let [plain_addr, mounted_addr] = broker.listen_addrs[..] else {
        panic!("two listeners: {:?}", broker.listen_addrs);
    };
    let plain = Client::connect(plain_addr, "plain").await;
    let mounted = Client::connect(mounted_addr, "mounted").await;
    assert_eq!(
        plain.subscribe("tenant/a/up/#", QoS::AtLeastOnce).await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    plain.subscribe("up/#", QoS::AtLeastOnce).await;
    mounted.subscribe("cmd/#", QoS::AtLeastOnce).await;

    // Into the mount: the plain client publishes under the prefix, the mounted one sees it
    // without.
    plain
        .publish("tenant/a/cmd/reboot", QoS::AtLeastOnce, false, b"now")
        .await;
    let got = mounted.recv_publish().await;
    assert_eq!(got.topic, "cmd/reboot");
    assert_eq!(&got.payload[..], b"now");
    // The same topic outside the mount does not reach it.
    plain
        .publish("cmd/reboot", QoS::AtLeastOnce, false, b"outside")
        .await;
    mounted.expect_no_publish(QUIET).await;

    // Out of the mount: what the mounted client publishes lands under the prefix only.
    mounted
        .publish("up/temp", QoS::AtLeastOnce, false, b"21")
        .await;
    let got = plain.recv_publish().await;
    assert_eq!(got.topic, "tenant/a/up/temp");
    assert_eq!(&got.payload[..], b"21");
    plain.expect_no_publish(QUIET).await;

    // `#` on a mounted listener is everything under the prefix, and only that.
    mounted.subscribe("#", QoS::AtMostOnce).await;
    plain
        .publish("elsewhere/x", QoS::AtLeastOnce, false, b"no")
        .await;
    plain
        .publish("tenant/b/x", QoS::AtLeastOnce, false, b"no")
        .await;
    plain
        .publish("tenant/a/deep/er", QoS::AtLeastOnce, false, b"yes")
        .await;
    let got = mounted.recv_publish().await;
    assert_eq!(got.topic, "deep/er");
    mounted.expect_no_publish(QUIET).await;
    // Unsubscribing works on the client's own filter.
    mounted.unsubscribe("#").await;
    plain
        .publish("tenant/a/deep/er", QoS::AtLeastOnce, false, b"gone")
        .await;
    mounted.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "current_thread")]
async fn mount_point_applies_to_retained_messages_wills_and_shared_subscriptions() {
    let broker = mounted_broker(|_| {});
    let [plain_addr, mounted_addr] = broker.listen_addrs[..] else {
        panic!("two listeners: {:?}", broker.listen_addrs);
    };
    let plain = Client::connect(plain_addr, "plain").await;
    // A retained message set by a mounted client is stored under the prefix.
    let setter = Client::connect(mounted_addr, "setter").await;
    setter.publish("state", QoS::AtLeastOnce, true, b"on").await;
    plain.subscribe("tenant/a/state", QoS::AtLeastOnce).await;
    let got = plain.recv_publish().await;
    assert_eq!(
        (got.topic.as_ref(), got.retain),
        (&b"tenant/a/state"[..], true)
    );
    plain.subscribe("state", QoS::AtLeastOnce).await;
    plain.expect_no_publish(QUIET).await;
    // A mounted subscriber gets it without the prefix; one set outside the prefix is not seen.
    plain
        .publish("other", QoS::AtLeastOnce, true, b"outside")
        .await;
    let reader = Client::connect(mounted_addr, "reader").await;
    reader.subscribe("+", QoS::AtLeastOnce).await;
    let got = reader.recv_publish().await;
    assert_eq!((got.topic.as_ref(), got.retain), (&b"state"[..], true));
    reader.expect_no_publish(QUIET).await;

    // A shared subscription: the prefix goes on the filter part.
    reader.subscribe("$share/g/jobs/#", QoS::AtLeastOnce).await;
    plain
        .publish("tenant/a/jobs/1", QoS::AtLeastOnce, false, b"job")
        .await;
    let got = reader.recv_publish().await;
    assert_eq!(got.topic, "jobs/1");
    plain
        .publish("jobs/2", QoS::AtLeastOnce, false, b"outside")
        .await;
    reader.expect_no_publish(QUIET).await;

    // A will of a mounted client is published under the prefix.
    plain.subscribe("tenant/a/lwt", QoS::AtLeastOnce).await;
    plain.subscribe("lwt", QoS::AtLeastOnce).await;
    let mut options = mqtt_options(mounted_addr, "dying");
    options.set_last_will(rumqttc::LastWill::new(
        "lwt",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (dying, _) = Client::connect_with(options).await;
    // Dropping the client aborts its event loop: the socket closes without DISCONNECT.
    drop(dying);
    let got = plain.recv_publish().await;
    assert_eq!(got.topic, "tenant/a/lwt");
    assert_eq!(&got.payload[..], b"gone");
    plain.expect_no_publish(QUIET).await;
}

#[tokio::test(flavor = "current_thread")]
async fn acl_rules_apply_to_the_mounted_topic() {
    let dir = TempDir::new("acl");
    // Anonymous clients may use tenant/a/... only.
    let acl = dir.file("acl", "topic readwrite tenant/a/#\n");
    let broker = mounted_broker(|config| {
        config.acl_file = Some(acl);
    });
    let [plain_addr, mounted_addr] = broker.listen_addrs[..] else {
        panic!("two listeners: {:?}", broker.listen_addrs);
    };
    let plain = Client::connect(plain_addr, "plain").await;
    let mounted = Client::connect(mounted_addr, "mounted").await;
    // `#` is tenant/a/# on the mounted listener: granted; on the plain one: refused.
    assert_eq!(
        mounted.subscribe("#", QoS::AtLeastOnce).await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    assert_eq!(
        plain.subscribe("#", QoS::AtLeastOnce).await,
        [SubscribeReasonCode::Failure]
    );
    assert_eq!(
        plain.subscribe("tenant/a/#", QoS::AtLeastOnce).await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    // Publishing `x` from the mounted listener is publishing tenant/a/x: allowed.
    mounted.publish("x", QoS::AtLeastOnce, false, b"1").await;
    let got = plain.recv_publish().await;
    assert_eq!(got.topic, "tenant/a/x");
    let got = mounted.recv_publish().await;
    assert_eq!(got.topic, "x");
    // The plain client publishing `x` is denied (3.1.1: acknowledged and dropped).
    plain.publish("x", QoS::AtLeastOnce, false, b"2").await;
    mounted.expect_no_publish(Duration::from_millis(300)).await;
    plain.expect_no_publish(QUIET).await;
}
