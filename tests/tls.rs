//! TLS and mutual TLS on the shard's engine, with rumqttc over rustls as the third-party client
//! and certificates made by the `openssl` command: a round trip, required and optional client
//! certificates, a certificate from an unknown CA, `use_identity_as_username` with a password
//! file and an ACL, certificate reload without dropping connections (and a bad new file kept
//! out), and a thousand stalled handshakes closed at the connect timeout while an established
//! client keeps working.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::certs::{tls_options, Certs};
use common::{Broker, Client, TIMEOUT};
use shardmq::config::{Config, ListenerConfig};

/// A broker with plain MQTT on `listen_addrs[0]` and TLS on `listen_addrs[1]`.
fn tls_broker(certs: &Certs, tweak: impl FnOnce(&mut Config)) -> (Broker, SocketAddr) {
    let broker = Broker::start_with(|config| {
        config.tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
        config.certfile = Some(certs.pem("server"));
        config.keyfile = Some(certs.key("server"));
        tweak(config);
    });
    let tls = broker.listen_addr(1);
    (broker, tls)
}

/// Connects with rumqttc and returns the CONNACK code or the connection error.
async fn try_connect(
    options: rumqttc::MqttOptions,
) -> Result<rumqttc::ConnectReturnCode, rumqttc::ConnectionError> {
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, eventloop.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(connack)))) => {
                return Ok(connack.code)
            }
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => panic!("no CONNACK and no error within {TIMEOUT:?}"),
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn rumqttc_round_trip_over_tls() {
    let certs = Certs::new("tls-round-trip", &[]);
    let (broker, tls) = tls_broker(&certs, |_| {});
    let config = certs.client_config("ca", None);
    let mut options = tls_options(tls, "tls-sub", Arc::clone(&config));
    options.set_max_packet_size(100_000, 100_000);
    let (subscriber, _) = Client::connect_with(options).await;
    subscriber
        .subscribe("tls/+", rumqttc::QoS::AtLeastOnce)
        .await;
    let mut options = tls_options(tls, "tls-pub", config);
    options.set_max_packet_size(100_000, 100_000);
    let (publisher, _) = Client::connect_with(options).await;
    // Large enough to span several TLS records.
    let payload = vec![0x5a; 40_000];
    publisher
        .publish("tls/a", rumqttc::QoS::AtLeastOnce, false, &payload)
        .await;
    let publish = subscriber.recv_publish().await;
    assert_eq!(publish.topic, "tls/a");
    assert_eq!(&publish.payload[..], &payload[..]);
    // TLS and plain clients share topics.
    let plain = Client::connect(broker.addr, "plain-pub").await;
    plain
        .publish("tls/b", rumqttc::QoS::AtMostOnce, false, b"from plain")
        .await;
    assert_eq!(&subscriber.recv_publish().await.payload[..], b"from plain");
}

#[tokio::test(flavor = "current_thread")]
async fn client_certificates_required_optional_and_rogue() {
    let certs = Certs::new("tls-mtls", &["device-1"]);
    let (_broker, tls) = tls_broker(&certs, |config| {
        config.cafile = Some(certs.pem("ca"));
        config.require_certificate = true;
    });
    // No certificate: the handshake fails, the client sees a TLS or I/O error.
    let refused = try_connect(tls_options(tls, "no-cert", certs.client_config("ca", None))).await;
    assert!(
        refused.is_err(),
        "a client without a certificate got {refused:?}"
    );
    // A certificate from a CA the broker does not trust: refused as well.
    let rogue = try_connect(tls_options(
        tls,
        "rogue",
        certs.client_config("ca", Some("rogue-client")),
    ))
    .await;
    assert!(rogue.is_err(), "a rogue certificate got {rogue:?}");
    // The right certificate gets in, and the broker kept serving through the failures.
    let good = try_connect(tls_options(
        tls,
        "device-1",
        certs.client_config("ca", Some("device-1")),
    ))
    .await;
    assert_eq!(good.expect("connects"), rumqttc::ConnectReturnCode::Success);
    // A client that trusts another CA refuses the broker's certificate.
    let wrong_ca = try_connect(tls_options(
        tls,
        "wrong-ca",
        certs.client_config("rogue-ca", Some("device-1")),
    ))
    .await;
    assert!(wrong_ca.is_err());

    // Optional client certificates: with a cafile and no require_certificate, both kinds get in.
    let (_broker, tls) = tls_broker(&certs, |config| {
        config.cafile = Some(certs.pem("ca"));
    });
    for client in [None, Some("device-1")] {
        let code = try_connect(tls_options(
            tls,
            "optional",
            certs.client_config("ca", client),
        ))
        .await
        .expect("connects");
        assert_eq!(code, rumqttc::ConnectReturnCode::Success);
    }
    let rogue = try_connect(tls_options(
        tls,
        "rogue",
        certs.client_config("ca", Some("rogue-client")),
    ))
    .await;
    assert!(
        rogue.is_err(),
        "a presented rogue certificate is still refused"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn certificate_cn_is_the_user_name() {
    let certs = Certs::new("tls-identity", &["sensor-9", "intruder"]);
    let passwords = certs.dir.0.join("passwd");
    // A password file: anonymous and password-less clients are refused elsewhere.
    let mut file = shardmq::auth::password::PasswordFile::default();
    file.set("someone", b"secret", 1000, [7; 12]).unwrap();
    std::fs::write(&passwords, file.to_text()).unwrap();
    let acl = certs.dir.0.join("acl");
    std::fs::write(&acl, "user sensor-9\ntopic readwrite sensors/sensor-9/#\n").unwrap();
    let broker = Broker::start_with(|config| {
        config.password_file = Some(passwords.clone());
        config.acl_file = Some(acl.clone());
        config.listener = vec![ListenerConfig {
            certfile: Some(certs.pem("server")),
            keyfile: Some(certs.key("server")),
            cafile: Some(certs.pem("ca")),
            require_certificate: true,
            use_identity_as_username: true,
            ..ListenerConfig::mqtt("127.0.0.1:0".parse().unwrap())
        }];
    });
    let tls = broker.listen_addr(1);
    let (sensor, _) = Client::connect_with(tls_options(
        tls,
        "sensor-9",
        certs.client_config("ca", Some("sensor-9")),
    ))
    .await;
    // The ACL sees user "sensor-9": its own subtree is granted, another one is not.
    let granted = sensor
        .subscribe("sensors/sensor-9/cmd", rumqttc::QoS::AtLeastOnce)
        .await;
    assert_eq!(
        granted,
        vec![rumqttc::SubscribeReasonCode::Success(
            rumqttc::QoS::AtLeastOnce
        )]
    );
    let denied = sensor
        .subscribe("sensors/other/cmd", rumqttc::QoS::AtLeastOnce)
        .await;
    assert_eq!(denied, vec![rumqttc::SubscribeReasonCode::Failure]);
    // Same certificate authority, another CN: connected, but the ACL grants it nothing.
    let (intruder, _) = Client::connect_with(tls_options(
        tls,
        "intruder",
        certs.client_config("ca", Some("intruder")),
    ))
    .await;
    let denied = intruder
        .subscribe("sensors/sensor-9/cmd", rumqttc::QoS::AtLeastOnce)
        .await;
    assert_eq!(denied, vec![rumqttc::SubscribeReasonCode::Failure]);
    // The plain listener still wants the password file's credentials.
    let mut options = common::mqtt_options(broker.addr, "anonymous");
    options.set_credentials("sensor-9", "");
    let code = try_connect(options).await;
    assert!(
        matches!(
            code,
            Err(rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::BadUserNamePassword
            ))
        ),
        "{code:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn certificates_reload_without_dropping_connections() {
    let certs = Certs::new("tls-reload", &[]);
    certs.ca("ca2");
    certs.leaf("server2", "localhost", "ca2", true);
    let (mut broker, tls) = tls_broker(&certs, |_| {});
    let (old_client, _) = Client::connect_with(tls_options(
        tls,
        "before-reload",
        certs.client_config("ca", None),
    ))
    .await;
    old_client
        .subscribe("reload/#", rumqttc::QoS::AtLeastOnce)
        .await;
    // Trusting only the new CA fails before the rotation.
    assert!(
        try_connect(tls_options(tls, "early", certs.client_config("ca2", None)))
            .await
            .is_err()
    );
    // Rotate: new files under the same paths, then the reload path (what SIGHUP does).
    std::fs::copy(certs.pem("server2"), certs.pem("server")).unwrap();
    std::fs::copy(certs.key("server2"), certs.key("server")).unwrap();
    broker.reload(|config| config.tls_files = Default::default());
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let code = try_connect(tls_options(tls, "after", certs.client_config("ca2", None))).await;
        if code.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection made before the rotation is still there and still served.
    let publisher = Client::connect(broker.addr, "reload-pub").await;
    publisher
        .publish("reload/x", rumqttc::QoS::AtLeastOnce, false, b"still here")
        .await;
    assert_eq!(&old_client.recv_publish().await.payload[..], b"still here");

    // A broken key file is refused by the reload and the working certificate stays.
    std::fs::write(
        certs.key("server"),
        "-----BEGIN PRIVATE KEY-----\ngarbage\n",
    )
    .unwrap();
    let mut config = broker.config().clone();
    config.tls_files = Default::default();
    assert!(broker.try_reload(config).is_err());
    let code = try_connect(tls_options(tls, "kept", certs.client_config("ca2", None))).await;
    assert_eq!(code.expect("connects"), rumqttc::ConnectReturnCode::Success);
}

/// 1,000 connections that stop in the middle of the TLS handshake (half a ClientHello, or
/// nothing at all) are closed at the connect timeout; meanwhile an established TLS client
/// keeps its round trips going.
#[tokio::test(flavor = "current_thread")]
async fn stalled_handshakes_are_closed_at_the_connect_timeout() {
    let certs = Certs::new("tls-stall", &[]);
    let (_broker, tls) = tls_broker(&certs, |config| config.connect_timeout = 2);
    let config = certs.client_config("ca", None);
    let (client, _) = Client::connect_with(tls_options(tls, "steady", Arc::clone(&config))).await;
    client.subscribe("steady", rumqttc::QoS::AtLeastOnce).await;
    // The start of a TLS record holding a ClientHello, never completed.
    let partial_hello = [
        0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let started = Instant::now();
    let mut stalled: Vec<TcpStream> = (0..1000)
        .map(|i| {
            let mut stream = TcpStream::connect(tls).expect("connects");
            if i % 2 == 0 {
                stream.write_all(&partial_hello).expect("writes");
            }
            stream
        })
        .collect();
    // The established client keeps working while they stall.
    for round in 0..10u8 {
        client
            .publish("steady", rumqttc::QoS::AtLeastOnce, false, &[round])
            .await;
        assert_eq!(&client.recv_publish().await.payload[..], &[round]);
    }
    // Every stalled connection is closed by the broker: EOF or reset, never a hang.
    let deadline = started + Duration::from_secs(15);
    for stream in &mut stalled {
        common::expect_server_close(stream, deadline, "a stalled handshake");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "closed before the connect timeout"
    );
    // And the broker still takes new TLS clients.
    let code = try_connect(tls_options(tls, "after-stall", config)).await;
    assert_eq!(code.expect("connects"), rumqttc::ConnectReturnCode::Success);
}
