//! The `shardmq` binary's logs: `--log-format json` writes one JSON object per line,
//! `--log-file` appends to a file that SIGHUP reopens (log rotation: rename, SIGHUP, the broker
//! goes on in a new file at the same path while the renamed one keeps the earlier lines).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{free_port, TempDir};
use common::Raw;

/// The broker process; killed (SIGKILL, by its own pid) and reaped on drop, so a failing test
/// leaves nothing behind.
struct Process(Child);

impl Process {
    fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.0.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid; the child has not been reaped (we hold it).
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // Child::kill signals this child's pid only (SIGKILL).
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until the file at `path` contains `text`; returns its contents.
fn wait_for_line(path: &Path, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let contents = read(path);
        if contents.contains(text) {
            return contents;
        }
        assert!(
            Instant::now() < deadline,
            "no {text:?} in {}:\n{contents}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every line of `contents` parsed as a JSON object with the fields a log shipper needs.
fn json_lines(contents: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    contents
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
            let object = value.as_object().expect("an object per line").clone();
            for key in ["timestamp", "level", "target", "message"] {
                assert!(object.contains_key(key), "no {key:?} in {line}");
            }
            object
        })
        .collect()
}

/// The lines whose message says that `client_id` connected.
fn connected(lines: &[serde_json::Map<String, serde_json::Value>], client_id: &str) -> usize {
    // Mosquitto's line: "New client connected from <address> as <client id> (...)."
    let text = format!(" as {client_id} ");
    lines
        .iter()
        .filter(|line| {
            let message = line["message"].as_str().unwrap_or_default();
            message.starts_with("New client connected from 127.0.0.1:") && message.contains(&text)
        })
        .count()
}

#[test]
fn json_log_file_is_reopened_on_sighup() {
    let dir = TempDir::new("rotate");
    let log = dir.0.join("a.log");
    let rotated = dir.0.join("a.log.1");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args([
            "--log-file",
            log.to_str().unwrap(),
            "--log-format",
            "json",
            "--listen",
            &listen,
            "--shards",
            "1",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the shardmq binary");
    let mut process = Process(child);
    let addr: SocketAddr = listen.parse().unwrap();

    wait_for_line(&log, "accepting connections");
    let (raw, _) = Raw::connect(addr, "first-client", true);
    let contents = wait_for_line(&log, "New client connected from 127.0.0.1:");
    let lines = json_lines(&contents);
    assert_eq!(connected(&lines, "first-client"), 1, "{contents}");
    let line = lines
        .iter()
        .find(|line| connected(std::slice::from_ref(line), "first-client") == 1)
        .unwrap();
    assert_eq!(line["level"], "INFO", "{line:?}");
    assert_eq!(line["shard"], 0, "the event's fields are keys: {line:?}");
    raw.disconnect();

    // logrotate: rename, then SIGHUP. The broker goes on in a new a.log.
    std::fs::rename(&log, &rotated).unwrap();
    process.signal(libc::SIGHUP);
    wait_for_line(&log, "log file reopened");
    // The reload itself is logged after the reopen, in the new file.
    wait_for_line(&log, "configuration reloaded");
    let (raw, _) = Raw::connect(addr, "second-client", true);
    let contents = wait_for_line(&log, " as second-client ");
    let new_lines = json_lines(&contents);
    assert_eq!(connected(&new_lines, "second-client"), 1, "{contents}");
    assert_eq!(connected(&new_lines, "first-client"), 0, "{contents}");
    raw.disconnect();

    // The renamed file keeps the earlier lines and gets nothing new.
    let old = read(&rotated);
    let old_lines = json_lines(&old);
    assert_eq!(connected(&old_lines, "first-client"), 1, "{old}");
    assert_eq!(connected(&old_lines, "second-client"), 0, "{old}");
    assert!(old.contains("accepting connections"), "{old}");

    // Nothing went to stderr: every line is in the files.
    process.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the broker did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut process.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.is_empty(), "stderr:\n{stderr}");
    wait_for_line(&log, "stopped");
    json_lines(&read(&log));
}

/// A slow consumer is logged once when its episode starts and once when it catches up, not
/// once per message.
#[test]
fn slow_consumer_episode_is_logged_once() {
    use shardmq::codec::{Packet, QoS};

    let dir = TempDir::new("slow");
    let log = dir.0.join("broker.log");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(["--log-file", log.to_str().unwrap(), "--listen", &listen])
        .args([
            "--shards",
            "1",
            "--max-queued-messages",
            "40",
            "--max-inflight",
            "4",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the shardmq binary");
    let _process = Process(child);
    let addr: SocketAddr = listen.parse().unwrap();
    wait_for_line(&log, "accepting connections");

    let (mut subscriber, _) = Raw::connect(addr, "slow-sub", true);
    subscriber.subscribe(1, "slow/t", QoS::AtLeastOnce);
    let (mut publisher, _) = Raw::connect(addr, "slow-pub", true);
    // 26 QoS 1 messages while the subscriber reads nothing: 4 in flight, 22 queued, past half
    // of the 40-message limit for three deliveries in a row (more would be held back by the
    // publisher's throttling and arrive later, as a second, genuine episode).
    const MESSAGES: u16 = 26;
    for id in 1..=MESSAGES {
        publisher.send(Packet::Publish(common::publish_packet(
            "slow/t",
            b"m",
            QoS::AtLeastOnce,
            false,
            id,
        )));
    }
    wait_for_line(&log, "Client slow-sub is a slow consumer");
    // Now it reads and acknowledges everything.
    for _ in 0..MESSAGES {
        let publish = subscriber.recv_publish();
        common::ack_publish(&mut subscriber, &publish);
    }
    let contents = wait_for_line(&log, "Client slow-sub caught up.");
    assert_eq!(
        contents.matches("is a slow consumer").count(),
        1,
        "one line per episode:\n{contents}"
    );
    assert_eq!(contents.matches("caught up.").count(), 1, "{contents}");
}
