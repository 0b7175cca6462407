//! The `shardmq` binary when a shard dies: the process must end (non-zero) instead of staying
//! half alive. The panic is injected with the hidden `--test-inject-panic SHARD` flag, which
//! makes that shard panic about a second after start. A control run without the flag keeps
//! serving and exits 0 on SIGTERM.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use common::process::{free_port, Process};

/// How long the binary may take to start listening.
const START: Duration = Duration::from_secs(10);
/// How long the process may take to end once the injected panic is due (~1 s after start).
const DEATH: Duration = Duration::from_secs(6);

/// A running `shardmq` process (2 shards, its own loopback port) and the address it serves.
struct Broker {
    process: Process,
    addr: SocketAddr,
}

impl Broker {
    fn spawn(extra: &[&str]) -> Broker {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let listen = addr.to_string();
        let mut args = vec!["--listen", &listen, "--shards", "2", "--log-level", "warn"];
        args.extend_from_slice(extra);
        Broker {
            process: Process::spawn(&args),
            addr,
        }
    }

    fn output(&self) -> String {
        self.process.output()
    }

    /// Waits until the broker accepts TCP connections; fails if it exits first.
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + START;
        loop {
            if let Some(status) = self.process.try_exit() {
                let output = self.finish();
                panic!(
                    "shardmq exited ({status}) before listening on {}:\n{output}",
                    self.addr
                );
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "shardmq did not listen on {} within {START:?}:\n{}",
                self.addr,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if the process ends within `within`.
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        self.process.wait_exit(within)
    }

    /// After the process has exited: the complete output (its pipes read to the end).
    fn finish(&mut self) -> String {
        let _ = self.process.wait_exit(Duration::from_secs(5));
        self.output()
    }

    fn signal(&self, signal: i32) {
        self.process.signal(signal);
    }
}

/// A minimal MQTT 3.1.1 CONNECT (clean session, keep-alive 0) and its CONNACK.
fn mqtt_connects(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return false;
    };
    let client_id = b"shard-death-probe";
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    if stream.write_all(&packet).is_err() {
        return false;
    }
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).is_ok() && connack == [0x20, 2, 0, 0]
}

/// `--test-inject-panic 1`: shard 1 panics about a second after start; the process must end
/// with a failure status within a few seconds, saying which shard died.
#[test]
fn a_shard_panic_ends_the_process() {
    let mut broker = Broker::spawn(&["--test-inject-panic", "1"]);
    broker.wait_listening();
    let Some(status) = broker.wait_exit(DEATH) else {
        panic!(
            "shardmq still running {DEATH:?} after it started listening, with shard 1 \
             panicking ~1 s after start (half alive):\n{}",
            broker.output()
        );
    };
    let output = broker.finish();
    assert!(
        !status.success(),
        "a dead shard must end the process with a failure status, got {status}:\n{output}"
    );
    let lower = output.to_lowercase();
    assert!(
        lower.contains("shard") && lower.contains("panic"),
        "the output should say that a shard panicked:\n{output}"
    );
}

/// Control: without the flag the same broker keeps running, serves MQTT, and exits with
/// status 0 on SIGTERM.
#[test]
fn without_injection_the_broker_runs_and_exits_cleanly() {
    let mut broker = Broker::spawn(&[]);
    broker.wait_listening();
    std::thread::sleep(Duration::from_secs(2));
    if let Some(status) = broker.process.try_exit() {
        panic!("shardmq exited on its own ({status}):\n{}", broker.finish());
    }
    assert!(
        mqtt_connects(broker.addr),
        "CONNECT answered by CONNACK 0:\n{}",
        broker.output()
    );
    broker.signal(libc::SIGTERM);
    let Some(status) = broker.wait_exit(Duration::from_secs(10)) else {
        panic!(
            "shardmq did not exit within 10 s of SIGTERM:\n{}",
            broker.output()
        );
    };
    let output = broker.finish();
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}\n{output}"
    );
}
