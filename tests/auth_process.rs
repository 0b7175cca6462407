//! The `shardmq` binary with a password file and an ACL file: SIGHUP reloads both (a bad new
//! file keeps the running ones and says why; subscriptions the new ACL denies are removed), the
//! start-up log says who may connect.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::process::{free_port, Process, TempDir};
use common::{connect_packet, Raw, QUIET};
use shardmq::auth::password::{PasswordFile, Verdict, DEFAULT_ITERATIONS};
use shardmq::codec::{Connect, MqttStr, QoS, ReasonCode};

fn passwords(users: &[(&str, &str)]) -> String {
    let mut file = PasswordFile::default();
    for (user, password) in users {
        file.set(user, password.as_bytes(), DEFAULT_ITERATIONS, [7; 12])
            .unwrap();
    }
    file.to_text()
}

fn login(client_id: &str, user: &str, password: &str) -> Connect {
    let mut connect = connect_packet(client_id, true);
    connect.username = Some(MqttStr::from(user));
    connect.password = Some(Bytes::copy_from_slice(password.as_bytes()));
    connect
}

fn connack(addr: SocketAddr, connect: Connect) -> ReasonCode {
    Raw::try_connect(addr, connect).1.reason
}

#[test]
fn sighup_reloads_the_password_and_acl_files() {
    let dir = TempDir::new("reload");
    let password_path = dir.0.join("passwd");
    let acl_path = dir.0.join("acl");
    std::fs::write(
        &password_path,
        passwords(&[("alice", "one"), ("bob", "bob")]),
    )
    .unwrap();
    std::fs::write(&acl_path, "user alice\ntopic a/#\nuser bob\ntopic #\n").unwrap();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut process = Process::spawn(&[
        "--listen",
        &addr.to_string(),
        "--shards",
        "2",
        "--password-file",
        password_path.to_str().unwrap(),
        "--acl-file",
        acl_path.to_str().unwrap(),
        // This test refuses ten logins from one address: without this the growing failed-login
        // delay (tested in tests/auth.rs) reaches seconds and outlasts the client's wait.
        "--failed-login-delay-ms",
        "0",
    ]);
    process.wait_for_output("shardmq accepting connections", 1);
    assert!(process
        .output()
        .contains("clients authenticate with the password file"));

    let (mut alice, _) = Raw::connect_with(addr, login("alice-1", "alice", "one"));
    assert_eq!(
        alice.subscribe(1, "a/#", QoS::AtMostOnce).reasons,
        vec![ReasonCode::Success]
    );
    assert_eq!(
        connack(addr, login("alice-2", "alice", "two")),
        ReasonCode::BadUserNameOrPassword
    );
    process.wait_for_output("CONNECT refused: authentication failed", 1);
    // The refusal names the client's address (the log is plain text here).
    assert!(
        process
            .output()
            .lines()
            .any(|line| line.contains("CONNECT refused") && line.contains("127.0.0.1:")),
        "{}",
        process.output()
    );

    // New password for alice, bob gone; alice may no longer read a/#.
    std::fs::write(
        &password_path,
        passwords(&[("alice", "two"), ("carol", "c")]),
    )
    .unwrap();
    std::fs::write(
        &acl_path,
        "user alice\ntopic write a/#\nuser carol\ntopic #\n",
    )
    .unwrap();
    process.signal(libc::SIGHUP);
    process.wait_for_output("configuration reloaded", 1);
    assert!(
        process.output().contains("password_file"),
        "{}",
        process.output()
    );
    process.wait_for_output("subscription removed: the reloaded ACL denies it", 1);
    // Each shard applies a reload at its next tick (200 ms): the log line above proves one
    // shard has it; a new connection may land on the other. Wait until the old password is
    // refused wherever the connection lands (several attempts spread over the shards).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut refused_in_a_row = 0;
    while refused_in_a_row < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "the old password was still accepted 5 s after the reload"
        );
        if connack(addr, login("alice-3", "alice", "one")) == ReasonCode::BadUserNameOrPassword {
            refused_in_a_row += 1;
        } else {
            refused_in_a_row = 0;
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    assert_eq!(
        connack(addr, login("bob-1", "bob", "bob")),
        ReasonCode::BadUserNameOrPassword
    );
    let (mut carol, _) = Raw::connect_with(addr, login("carol-1", "carol", "c"));
    // alice stays connected, but her a/# subscription is gone.
    carol.publish("a/x", b"x", QoS::AtLeastOnce, false, 1);
    alice.expect_silence(QUIET);
    alice.ping();
    assert_eq!(
        alice.subscribe(2, "a/#", QoS::AtMostOnce).reasons,
        vec![ReasonCode::UnspecifiedError]
    );

    // A bad file: the running configuration (and files) stay, the log says why.
    std::fs::write(&acl_path, "user alice\ntopic sometimes a/#\n").unwrap();
    process.signal(libc::SIGHUP);
    process.wait_for_output("configuration not reloaded", 1);
    assert!(
        process.output().contains("acl_file"),
        "{}",
        process.output()
    );
    Raw::connect_with(addr, login("alice-4", "alice", "two"))
        .0
        .ping();
    let (mut carol2, _) = Raw::connect_with(addr, login("carol-2", "carol", "c"));
    assert_eq!(
        carol2.subscribe(1, "z/#", QoS::AtMostOnce).reasons,
        vec![ReasonCode::Success]
    );

    process.signal(libc::SIGTERM);
    let status = process.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status:?}\n{}", process.output());
}

#[test]
fn default_start_up_log_says_how_to_open_up() {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut process = Process::spawn(&["--listen", &addr.to_string(), "--shards", "1"]);
    process.wait_for_output("shardmq accepting connections", 1);
    let output = process.output();
    assert!(
        output.contains("--listen 0.0.0.0:1883 --allow-anonymous"),
        "{output}"
    );
    assert!(output.contains("--password-file"), "{output}");
    // Anonymous loopback clients are accepted.
    Raw::connect(addr, "anon", true).0.ping();
    process.signal(libc::SIGTERM);
    assert!(process.wait_exit(Duration::from_secs(10)).is_some());
}

fn shardmq(args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn passwd_subcommand_writes_a_mosquitto_password_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("passwd");
    let path = dir.0.join("passwd");
    let file = path.to_str().unwrap();
    let out = shardmq(&["passwd", "-c", "-b", file, "alice", "s3cret"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Prompted (stdin is not a terminal here: two lines).
    let out = shardmq(&["passwd", file, "bob"], "b0b\nb0b\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = shardmq(&["passwd", file, "carol"], "one\ntwo\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("do not match"));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("alice:$7$101$"), "{text}");
    let loaded = PasswordFile::load(&path).unwrap();
    assert_eq!(loaded.verify("alice", b"s3cret"), Verdict::Ok);
    assert_eq!(loaded.verify("bob", b"b0b"), Verdict::Ok);
    assert_eq!(loaded.verify("carol", b"one"), Verdict::UnknownUser);
    let out = shardmq(&["passwd", "-D", file, "alice"], "");
    assert!(out.status.success());
    let loaded = PasswordFile::load(&path).unwrap();
    assert_eq!(loaded.verify("alice", b"s3cret"), Verdict::UnknownUser);

    // The file works with the broker.
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut process = Process::spawn(&[
        "--listen",
        &addr.to_string(),
        "--shards",
        "1",
        "--password-file",
        file,
    ]);
    process.wait_for_output("shardmq accepting connections", 1);
    Raw::connect_with(addr, login("bob", "bob", "b0b")).0.ping();
    assert_eq!(
        connack(addr, login("anon", "", "")),
        ReasonCode::BadUserNameOrPassword
    );
    process.signal(libc::SIGTERM);
    assert!(process.wait_exit(Duration::from_secs(10)).is_some());

    // mosquitto_passwd, when installed, reads and updates our file.
    if Command::new("mosquitto_passwd").arg("-h").output().is_ok() {
        let out = Command::new("mosquitto_passwd")
            .args(["-b", file, "dave", "d4ve"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let loaded = PasswordFile::load(&path).unwrap();
        assert_eq!(loaded.verify("bob", b"b0b"), Verdict::Ok);
        assert_eq!(loaded.verify("dave", b"d4ve"), Verdict::Ok);
    }
}

#[test]
fn bad_files_and_open_listeners_stop_the_start() {
    let dir = TempDir::new("bad");
    let path = dir.0.join("passwd");
    std::fs::write(&path, "alice:$8$argon\n").unwrap();
    let out = shardmq(
        &[
            "--listen",
            "127.0.0.1:0",
            "--password-file",
            path.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("password_file") && stderr.contains("line 1"),
        "{stderr}"
    );

    let out = shardmq(&["--listen", "0.0.0.0:0"], "");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not on loopback"), "{stderr}");
    assert!(stderr.contains("--allow-anonymous"), "{stderr}");
}
