//! The `shardmq` binary when a shard dies: the process must end (non-zero) instead of staying
//! half alive. The panic is injected with the hidden `--test-inject-panic SHARD` flag, which
//! makes that shard panic about a second after start. A control run without the flag keeps
//! serving and exits 0 on SIGTERM.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the binary may take to start listening.
const START: Duration = Duration::from_secs(10);
/// How long the process may take to end once the injected panic is due (~1 s after start).
const DEATH: Duration = Duration::from_secs(6);

/// A loopback port nobody listens on (bound, read, released).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// A running `shardmq` process, its stdout and stderr collected in the background. Killed
/// (by its own pid, SIGKILL) and reaped on drop, so a failing test leaves nothing behind.
struct Broker {
    child: Child,
    addr: SocketAddr,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Broker {
    fn spawn(extra: &[&str]) -> Broker {
        let port = free_port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
            .args(["--listen", &addr.to_string(), "--shards", "2"])
            .args(["--log-level", "warn"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the shardmq binary");
        let output = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let readers = vec![
            collect(stdout, Arc::clone(&output)),
            collect(stderr, Arc::clone(&output)),
        ];
        Broker {
            child,
            addr,
            output,
            readers,
        }
    }

    /// Everything the process wrote so far (stdout and stderr interleaved by chunk).
    fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until the broker accepts TCP connections; fails if it exits first.
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + START;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
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
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// After the process has exited: the complete output (the pipes are at end of stream).
    fn finish(&mut self) -> String {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.output()
    }

    fn signal(&self, signal: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid; the child has not been reaped (we hold it).
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // Child::kill signals this child's pid only (SIGKILL).
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => into.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    })
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
    if let Some(status) = broker.child.try_wait().unwrap() {
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
