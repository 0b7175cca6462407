//! The `/admin` endpoints of the metrics listener, against a real broker (2 shards) with
//! rumqttc clients (MQTT 3.1.1 and 5.0): the client list and its fields, the bearer token (401
//! without it, 404 for everything while no token is configured), disconnecting a client (MQTT 5:
//! DISCONNECT 0x98; its will is delivered) and deleting a stored session (its queued messages
//! are gone, the next CONNECT gets session present = 0). Through the binary: the token from
//! `--admin-token-file`, replaced on SIGHUP.
//!
//! The HTTP client is a plain `TcpStream` (one request per connection, as the server answers).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Broker, Client, ClientV5, Raw, Sync, QUIET, TIMEOUT};
use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, LastWill as LastWillV5};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::{LastWill, QoS as RQoS};
use serde_json::Value;
use shardmq::codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use shardmq::config::AdminToken;
use shardmq::metrics::{self, MetricsServer};

const TOKEN: &str = "test-admin-token-0123456789abcdef";

// ----- HTTP ------------------------------------------------------------------------------------

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Sends `request` and reads the answer to the end of the stream (the server closes it).
fn exchange(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect to the listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(request).expect("send the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(&raw) {
        Ok(httparse::Status::Complete(head)) => head,
        other => panic!(
            "not an HTTP answer ({other:?}): {:?}",
            String::from_utf8_lossy(&raw)
        ),
    };
    let answer = Response {
        status: response.code.unwrap(),
        headers: response
            .headers
            .iter()
            .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into()))
            .collect(),
        body: String::from_utf8(raw[head..].to_vec()).expect("a UTF-8 body"),
    };
    assert_eq!(
        answer.header("Content-Length"),
        Some(answer.body.len().to_string().as_str())
    );
    answer
}

/// `method path` with `Authorization: Bearer <token>` when a token is given.
fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Response {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}\r\n");
    exchange(addr, request.as_bytes())
}

fn admin(addr: SocketAddr, method: &str, path: &str) -> Response {
    let response = request(addr, method, path, Some(TOKEN));
    assert_eq!(response.header("Content-Type"), Some("application/json"));
    assert_eq!(response.header("Cache-Control"), Some("no-store"));
    response
}

/// `GET /admin/clients` (200 expected).
fn clients(addr: SocketAddr, query: &str) -> Value {
    let response = admin(addr, "GET", &format!("/admin/clients{query}"));
    assert_eq!(response.status, 200, "{}", response.body);
    response.json()
}

/// Lists until `check` holds (requests are answered at the shards' ticks, and connections are
/// counted once their CONNACK went out).
fn clients_until(addr: SocketAddr, what: &str, mut check: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let list = clients(addr, "");
        if check(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "never {what}: {list:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn client<'a>(list: &'a Value, id: &str) -> &'a Value {
    list["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == id)
        .unwrap_or_else(|| panic!("{id} is not listed: {list:#}"))
}

/// A percent-encoded path segment (every byte that is not unreserved).
fn encode(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ----- brokers -----------------------------------------------------------------------------

fn broker_with_token(tweak: impl FnOnce(&mut shardmq::config::Config)) -> Broker {
    Broker::start_with(|config| {
        config.admin_token = Some(AdminToken(TOKEN.into()));
        tweak(config);
    })
}

fn serve(broker: &Broker) -> MetricsServer {
    metrics::spawn_with_admin(
        "127.0.0.1:0".parse().unwrap(),
        broker.stats_source(),
        Some(broker.admin()),
    )
    .expect("the metrics listener starts")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Waits for the broker to end `client`'s connection with DISCONNECT 0x98, as rumqttc reads
/// it (the broker writes the property length after the reason: rumqttc 0.24 needs it).
async fn expect_closed_by_admin(client: &ClientV5) {
    match client.wait_disconnected(TIMEOUT).await {
        rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
            reason_code,
            ..
        }) => assert_eq!(reason_code, DisconnectReasonCode::AdministrativeAction),
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
}

// ----- tests -------------------------------------------------------------------------------

/// Clients on both shards, MQTT 3.1.1 and 5.0, one with messages in flight and queued: listed
/// with their fields; an offline session is not; `limit` truncates, `total` still counts all.
#[tokio::test]
async fn list_shows_connected_clients_across_shards() {
    let broker = broker_with_token(|config| config.max_inflight = 2);
    let server = serve(&broker);
    let addr = server.local_addr();

    let mut options = common::mqtt_options(broker.shard(0), "list-v4");
    options.set_credentials("alice", "pw");
    let (_v4, _) = Client::connect_with(options).await;
    let (_v5, _) = ClientV5::connect(broker.shard(1), "list-v5", |options| {
        options.set_credentials("bob", "pw");
    })
    .await;
    // A subscriber that never acknowledges: 2 messages in flight (max_inflight), 3 queued.
    let (mut slow, _) = Raw::connect(broker.shard(1), "list-slow", true);
    slow.subscribe(1, "list/t", QoS::AtLeastOnce);
    let (mut publisher, _) = Raw::connect(broker.shard(1), "list-pub", true);
    for id in 1..=5u16 {
        publisher.publish("list/t", b"m", QoS::AtLeastOnce, false, id);
    }
    // A persistent session that is offline: not a connected client.
    let (offline, _) = Raw::connect(broker.shard(0), "list-offline", false);
    offline.disconnect();

    let list = clients_until(addr, "4 clients, 5 messages for list-slow", |list| {
        list["total"] == 4
            && list["clients"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["client_id"] == "list-slow" && c["queued"] == 3)
    });
    let started = unix_now();
    assert_eq!(list["returned"], 4);
    assert_eq!(list["truncated"], false);
    assert_eq!(list["limit"], 1000);
    let ids: Vec<&str> = list["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["list-pub", "list-slow", "list-v4", "list-v5"],
        "sorted"
    );

    let v4 = client(&list, "list-v4");
    assert_eq!(v4["protocol"], "3.1.1");
    assert_eq!(v4["shard"], 0);
    assert_eq!(v4["username"], "alice");
    assert_eq!(v4["clean_session"], true);
    assert_eq!(
        (v4["queued"].as_u64(), v4["inflight"].as_u64()),
        (Some(0), Some(0))
    );
    let address: SocketAddr = v4["address"].as_str().unwrap().parse().unwrap();
    assert!(
        address.ip().is_loopback() && address.port() != 0,
        "{address}"
    );
    assert!(v4["connected_secs"].as_u64().unwrap() < 10, "{v4}");
    let since = v4["connected_since"].as_u64().unwrap();
    assert!(
        since <= started && since + 10 >= started,
        "{since} vs {started}"
    );

    let v5 = client(&list, "list-v5");
    assert_eq!(v5["protocol"], "5.0");
    assert_eq!(v5["shard"], 1);
    assert_eq!(v5["username"], "bob");

    let slow_info = client(&list, "list-slow");
    assert_eq!(slow_info["shard"], 1);
    assert_eq!(slow_info["username"], Value::Null);
    assert_eq!(slow_info["inflight"], 2);
    assert_eq!(slow_info["queued"], 3);
    assert_eq!(
        slow_info["address"].as_str(),
        Some(slow.local_addr().to_string().as_str())
    );

    let limited = clients(addr, "?limit=1");
    assert_eq!(limited["total"], 4);
    assert_eq!(limited["returned"], 1);
    assert_eq!(limited["limit"], 1);
    assert_eq!(limited["truncated"], true);
    assert_eq!(limited["clients"].as_array().unwrap().len(), 1);
    assert_eq!(clients(addr, "?limit=1000000")["limit"], 10_000);
    let bad = admin(addr, "GET", "/admin/clients?limit=lots");
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].is_string());
    drop(slow);
}

/// With a token configured: no header, another token or another scheme is 401 with
/// `WWW-Authenticate: Bearer`, on every admin path; the token opens them; /metrics needs none.
#[test]
fn admin_paths_need_the_bearer_token() {
    let broker = broker_with_token(|_| {});
    let server = serve(&broker);
    let addr = server.local_addr();

    for (method, path) in [
        ("GET", "/admin/clients"),
        ("POST", "/admin/clients/x/disconnect"),
        ("DELETE", "/admin/sessions/x"),
        ("GET", "/admin/nowhere"),
    ] {
        let missing = request(addr, method, path, None);
        assert_eq!(missing.status, 401, "{method} {path}: {}", missing.body);
        assert_eq!(
            missing.header("WWW-Authenticate"),
            Some("Bearer realm=\"shardmq\"")
        );
        let wrong = request(
            addr,
            method,
            path,
            Some("test-admin-token-0123456789abcdeX"),
        );
        assert_eq!(wrong.status, 401, "{method} {path}");
        assert_eq!(
            wrong.header("WWW-Authenticate"),
            Some("Bearer realm=\"shardmq\", error=\"invalid_token\"")
        );
        assert_eq!(wrong.json()["error"], "invalid token");
        let prefix = request(addr, method, path, Some(&TOKEN[..TOKEN.len() - 1]));
        assert_eq!(prefix.status, 401, "a prefix of the token");
    }
    let basic = exchange(
        addr,
        format!("GET /admin/clients HTTP/1.1\r\nAuthorization: Basic {TOKEN}\r\n\r\n").as_bytes(),
    );
    assert_eq!(basic.status, 401);
    // The scheme is case-insensitive.
    let lower = exchange(
        addr,
        format!("GET /admin/clients HTTP/1.1\r\nauthorization: bearer {TOKEN}\r\n\r\n").as_bytes(),
    );
    assert_eq!(lower.status, 200, "{}", lower.body);

    assert_eq!(clients(addr, "")["total"], 0);
    assert_eq!(admin(addr, "GET", "/admin/nowhere").status, 404);
    let wrong_method = admin(addr, "DELETE", "/admin/clients");
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("Allow"), Some("GET"));
    assert_eq!(request(addr, "GET", "/metrics", None).status, 200);
    assert_eq!(request(addr, "GET", "/healthz", None).status, 200);

    // A body (which no endpoint needs) is read and discarded; a large one is refused.
    let with_body = exchange(
        addr,
        format!(
            "POST /admin/clients/nobody/disconnect HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: 5\r\n\r\nhello"
        )
        .as_bytes(),
    );
    assert_eq!(with_body.status, 404, "{}", with_body.body);
    assert_eq!(with_body.json()["error"], "no such client");
    let huge = exchange(
        addr,
        b"POST /admin/clients/x/disconnect HTTP/1.1\r\nContent-Length: 100000\r\n\r\n",
    );
    assert_eq!(huge.status, 413);
}

/// Without a token every admin path is 404, with or without credentials; the rest serves.
#[test]
fn admin_is_disabled_without_a_token() {
    let broker = Broker::start();
    let server = serve(&broker);
    let addr = server.local_addr();
    let (_client, _) = Raw::connect(broker.shard(0), "no-admin", true);
    let unknown = request(addr, "GET", "/nowhere", None);
    assert_eq!(unknown.status, 404);
    for (method, path) in [
        ("GET", "/admin/clients"),
        ("POST", "/admin/clients/no-admin/disconnect"),
        ("DELETE", "/admin/sessions/no-admin"),
        ("GET", "/admin"),
    ] {
        for token in [None, Some(TOKEN), Some("")] {
            let response = request(addr, method, path, token);
            assert_eq!(response.status, 404, "{method} {path} ({token:?})");
            assert!(response.header("WWW-Authenticate").is_none());
            // Exactly what any unknown path gets: nothing tells that /admin exists.
            assert_eq!(response.body, unknown.body);
            assert_eq!(
                response.header("Content-Type"),
                unknown.header("Content-Type")
            );
        }
    }
    assert_eq!(request(addr, "GET", "/healthz", None).status, 200);
    // The client was not touched.
    assert_eq!(broker.connections(), 1);
    // And without an admin handle at all (`metrics::spawn`), the same.
    let plain = metrics::spawn("127.0.0.1:0".parse().unwrap(), broker.stats_source()).unwrap();
    let response = request(plain.local_addr(), "GET", "/admin/clients", Some(TOKEN));
    assert_eq!(response.status, 404);
}

/// MQTT 5.0: the client gets DISCONNECT 0x98 (read by rumqttc and by a raw client); MQTT 3.1.1: its connection closes. The wills reach a subscriber
/// on the other shard. A second disconnect is 404.
#[tokio::test]
async fn disconnect_closes_the_client_and_publishes_its_will() {
    let broker = broker_with_token(|_| {});
    let server = serve(&broker);
    let addr = server.local_addr();
    let watcher = Client::connect(broker.shard(0), "dc-watcher").await;
    watcher.subscribe("will/#", RQoS::AtLeastOnce).await;
    Sync::new(&broker).settle();

    let (v5, _) = ClientV5::connect(broker.shard(1), "dc/v5 client", |options| {
        options.set_last_will(LastWillV5::new(
            "will/v5",
            "v5 gone",
            QoS5::AtLeastOnce,
            false,
            None,
        ));
    })
    .await;
    clients_until(addr, "dc/v5 client listed", |list| list["total"] == 2);
    let response = admin(
        addr,
        "POST",
        &format!("/admin/clients/{}/disconnect", encode("dc/v5 client")),
    );
    assert_eq!(response.status, 200, "{}", response.body);
    let body = response.json();
    assert_eq!(body["disconnected"], true);
    assert_eq!(body["client_id"], "dc/v5 client");
    assert_eq!(body["shard"], 1);
    assert_eq!(body["protocol"], "5.0");
    assert_eq!(body["will"], true);
    expect_closed_by_admin(&v5).await;
    let will = watcher.recv_publish().await;
    assert_eq!(will.topic, "will/v5");
    assert_eq!(&will.payload[..], b"v5 gone");

    // The DISCONNECT itself, as a raw MQTT 5.0 client reads it.
    let mut connect = common::connect_packet_for(ProtocolVersion::V5, "dc-raw5", false, 30, 0);
    connect.will = Some(common::will(
        "will/raw5",
        b"raw gone",
        QoS::AtMostOnce,
        false,
    ));
    let (mut raw5, _) = Raw::connect_with(broker.shard(0), connect);
    clients_until(addr, "dc-raw5 listed", |list| list["total"] == 2);
    let response = admin(addr, "POST", "/admin/clients/dc-raw5/disconnect");
    assert_eq!(response.status, 200, "{}", response.body);
    match raw5.expect_closed(TIMEOUT).as_slice() {
        [Packet::Disconnect(disconnect)] => {
            assert_eq!(disconnect.reason, ReasonCode::AdministrativeAction)
        }
        other => panic!("expected DISCONNECT 0x98, got {other:?}"),
    }
    assert_eq!(watcher.recv_publish().await.topic, "will/raw5");

    let mut options = common::mqtt_options(broker.shard(1), "dc-v4");
    options.set_last_will(LastWill::new(
        "will/v4",
        "v4 gone",
        RQoS::AtLeastOnce,
        false,
    ));
    let (v4, _) = Client::connect_with(options).await;
    clients_until(addr, "dc-v4 listed", |list| list["total"] == 2);
    let response = admin(addr, "POST", "/admin/clients/dc-v4/disconnect");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.json()["protocol"], "3.1.1");
    v4.wait_disconnected(TIMEOUT).await;
    let will = watcher.recv_publish().await;
    assert_eq!(will.topic, "will/v4");
    watcher.expect_no_publish(QUIET).await;

    // Gone (clean sessions end with their connection): 404, and only the watcher is listed.
    let again = admin(addr, "POST", "/admin/clients/dc-v4/disconnect");
    assert_eq!(again.status, 404, "{}", again.body);
    assert_eq!(again.json()["client_id"], "dc-v4");
    clients_until(addr, "only the watcher", |list| list["total"] == 1);
}

/// A disconnected persistent session is stored but not connected: disconnect says 404 and
/// leaves it; deleting it drops its queued QoS 1 messages, and the next CONNECT with clean
/// session 0 (on the other shard) starts afresh.
#[tokio::test]
async fn delete_discards_an_offline_session() {
    let broker = broker_with_token(|_| {});
    let server = serve(&broker);
    let addr = server.local_addr();

    let mut options = common::mqtt_options(broker.shard(1), "del-keeper");
    options.set_clean_session(false);
    let (keeper, connack) = Client::connect_with(options.clone()).await;
    assert!(!connack.session_present);
    keeper.subscribe("del/t", RQoS::AtLeastOnce).await;
    keeper.disconnect().await;
    // The publisher shares the keeper's shard: a PUBACK means the message is queued.
    let publisher = Client::connect(broker.shard(1), "del-pub").await;
    for i in 0..3 {
        publisher
            .publish(
                "del/t",
                RQoS::AtLeastOnce,
                false,
                format!("m{i}").as_bytes(),
            )
            .await;
    }
    clients_until(addr, "the keeper offline", |list| list["total"] == 1);

    let not_connected = admin(addr, "POST", "/admin/clients/del-keeper/disconnect");
    assert_eq!(not_connected.status, 404, "{}", not_connected.body);
    assert!(
        not_connected.json()["error"]
            .as_str()
            .unwrap()
            .contains("not connected"),
        "{}",
        not_connected.body
    );

    let response = admin(addr, "DELETE", "/admin/sessions/del-keeper");
    assert_eq!(response.status, 200, "{}", response.body);
    let body = response.json();
    assert_eq!(body["deleted"], true);
    assert_eq!(body["was_connected"], false);
    assert_eq!(body["shard"], 1);
    assert_eq!(body["queued"], 3, "{body}");
    assert_eq!(body["subscriptions"], 1);
    assert_eq!(
        admin(addr, "DELETE", "/admin/sessions/del-keeper").status,
        404
    );

    // Back, on the other shard, with clean session 0: a new session, nothing queued, and no
    // subscription left to route to it.
    let options = {
        let mut o = common::mqtt_options(broker.shard(0), "del-keeper");
        o.set_clean_session(false);
        o
    };
    let (keeper, connack) = Client::connect_with(options).await;
    assert!(!connack.session_present, "the session was deleted");
    keeper.expect_no_publish(QUIET).await;
    publisher
        .publish("del/t", RQoS::AtLeastOnce, false, b"after")
        .await;
    keeper.expect_no_publish(QUIET).await;
}

/// Deleting the session of a connected MQTT 5.0 client: DISCONNECT 0x98, its will, its
/// messages in flight and queued gone; reconnecting (clean start 0) finds no session.
#[tokio::test]
async fn delete_disconnects_a_connected_client_first() {
    let broker = broker_with_token(|config| config.max_inflight = 1);
    let server = serve(&broker);
    let addr = server.local_addr();
    let watcher = Client::connect(broker.shard(1), "dl-watcher").await;
    watcher.subscribe("will/#", RQoS::AtLeastOnce).await;
    Sync::new(&broker).settle();

    let persistent = |options: &mut rumqttc::v5::MqttOptions| {
        options.set_clean_start(false);
        common::v5_session_expiry(options, 3600);
        options.set_manual_acks(true);
    };
    let (v5, _) = ClientV5::connect(broker.shard(0), "dl-v5", |options| {
        persistent(options);
        options.set_last_will(LastWillV5::new(
            "will/dl",
            "deleted",
            QoS5::AtMostOnce,
            false,
            None,
        ));
    })
    .await;
    v5.subscribe("dl/t", QoS5::AtLeastOnce).await;
    let (mut publisher, _) = Raw::connect(broker.shard(0), "dl-pub", true);
    for id in 1..=3u16 {
        publisher.publish("dl/t", b"m", QoS::AtLeastOnce, false, id);
    }
    // Not acknowledged (manual acks): one in flight, two queued.
    let list = clients_until(addr, "dl-v5 with its messages", |list| {
        list["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["client_id"] == "dl-v5" && c["queued"] == 2 && c["inflight"] == 1)
    });
    assert_eq!(client(&list, "dl-v5")["clean_session"], false);

    let response = admin(addr, "DELETE", "/admin/sessions/dl-v5");
    assert_eq!(response.status, 200, "{}", response.body);
    let body = response.json();
    assert_eq!(body["was_connected"], true);
    assert_eq!(
        (body["queued"].as_u64(), body["inflight"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(body["will"], true);
    expect_closed_by_admin(&v5).await;
    assert_eq!(watcher.recv_publish().await.topic, "will/dl");
    watcher.expect_no_publish(QUIET).await;

    let (again, connack) = ClientV5::connect(broker.shard(1), "dl-v5", persistent).await;
    assert!(!connack.session_present, "the session was deleted");
    again.expect_no_publish(QUIET).await;
    drop(publisher);
}

// ----- the binary ------------------------------------------------------------------------------

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// A `shardmq` process, killed (by its own pid) and reaped on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `--admin-token-file`: the token it holds opens /admin; SIGHUP reads it again, so a new
/// token replaces the old at once.
#[test]
fn binary_reads_the_token_file_and_reloads_it() {
    let dir = std::env::temp_dir().join(format!("shardmq-admin-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mqtt = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let process = Process(
        Command::new(env!("CARGO_BIN_EXE_shardmq"))
            .args([
                "--listen",
                &mqtt.to_string(),
                "--metrics-listen",
                &http.to_string(),
                "--admin-token-file",
                token_file.to_str().unwrap(),
                "--shards",
                "2",
                "--log-level",
                "warn",
            ])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the shardmq binary"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&http, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "no listener on {http}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_client, _) = Raw::connect(mqtt, "bin-client", true);
    let list = clients_until(http, "bin-client listed", |list| list["total"] == 1);
    assert_eq!(client(&list, "bin-client")["protocol"], "3.1.1");

    let new_token = "replaced-admin-token-9876543210";
    std::fs::write(&token_file, new_token).unwrap();
    let pid = libc::pid_t::try_from(process.0.id()).unwrap();
    // SAFETY: kill(2) on our own child, not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + TIMEOUT;
    while request(http, "GET", "/admin/clients", Some(TOKEN)).status != 401 {
        assert!(Instant::now() < deadline, "the old token still works");
        std::thread::sleep(Duration::from_millis(50));
    }
    let response = request(http, "GET", "/admin/clients", Some(new_token));
    assert_eq!(response.status, 200, "{}", response.body);
    drop(process);
    let _ = std::fs::remove_dir_all(&dir);
}
