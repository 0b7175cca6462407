//! The io_uring engine at scale, against the `shardmq` binary in its own process (the test's
//! 8,000 client sockets and the broker's 8,000 would not both fit under one process's
//! open-file limit): 8,000 connections opened (each with CONNECT answered by CONNACK) and
//! closed, twice. Afterwards the broker holds exactly the descriptors it held before, and the
//! second round leaves its memory where the first did (no per-connection leak).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 8_000;
/// Connections opened before their CONNACKs are read (stays under the listen backlog).
const BATCH: usize = 250;

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// Raises this process's open-file limit to its hard limit (the broker inherits it).
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reads and writes one rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

struct Broker {
    child: Child,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
        * 1024
}

fn connect_packet(client_id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    packet
}

/// Opens `CONNECTIONS` MQTT connections (all CONNACKed), then closes them all.
fn round(addr: SocketAddr, round: usize) {
    let mut open = Vec::with_capacity(CONNECTIONS);
    for batch in 0..CONNECTIONS / BATCH {
        let mut streams = Vec::with_capacity(BATCH);
        for i in 0..BATCH {
            let mut stream = TcpStream::connect(addr).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let id = format!("scale-{round}-{}", batch * BATCH + i);
            stream
                .write_all(&connect_packet(&id))
                .expect("send CONNECT");
            streams.push(stream);
        }
        for stream in &mut streams {
            let mut connack = [0u8; 4];
            stream.read_exact(&mut connack).expect("read CONNACK");
            assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK accepted");
        }
        open.extend(streams);
    }
    drop(open);
}

/// Waits until the broker holds `expected` descriptors (closing takes a pass or two).
fn settle(pid: u32, expected: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = fd_count(pid);
        if now <= expected || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn eight_thousand_connections_twice_leak_nothing() {
    let limit = raise_fd_limit();
    if limit < (CONNECTIONS + 500) as u64 {
        eprintln!(
            "skipping: open-file limit {limit} is below {}",
            CONNECTIONS + 500
        );
        return;
    }
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .args(["--listen", &addr.to_string(), "--shards", "2"])
        .args(["--log-level", "error"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the shardmq binary");
    let broker = Broker { child };
    let pid = broker.child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "broker did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The probe connection above closes without CONNECT: let it go before counting.
    std::thread::sleep(Duration::from_millis(300));
    let baseline = fd_count(pid);

    round(addr, 1);
    let after_first = settle(pid, baseline);
    let rss_first = rss_bytes(pid);
    round(addr, 2);
    let after_second = settle(pid, baseline);
    let rss_second = rss_bytes(pid);

    assert_eq!(after_first, baseline, "descriptors after round 1");
    assert_eq!(after_second, baseline, "descriptors after round 2");
    // A leak of even 256 bytes per connection would add 2 MB in the second round.
    assert!(
        rss_second <= rss_first + (2 << 20),
        "memory grew from {rss_first} to {rss_second} bytes in the second round"
    );
}
