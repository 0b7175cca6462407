//! The Prometheus endpoint (`--metrics-listen`): `GET /metrics` and `GET /healthz`, served by
//! one plain thread that is not a shard.
//!
//! A scrape never reaches a shard: each shard publishes a snapshot of its [`ShardStats`] once
//! per tick (200 ms), and this thread reads those snapshots through a [`StatsSource`]. Nothing
//! here runs on a shard thread or takes anything a shard's hot path takes.
//!
//! The server is deliberately small, since its clients are a Prometheus scraper and health
//! probes: a blocking `accept` loop, one request per connection handled inline, at most
//! 8 KiB of request read (parsed with `httparse`) within 2 s, HTTP/1.1 answers with
//! `Connection: close`. `/metrics` is encoded by `prometheus-client` in the Prometheus text
//! format 0.0.4 ([`CONTENT_TYPE`]):
//!
//! - one family per plain [`ShardStats`](crate::broker::ShardStats) field, labelled
//!   `shard="<i>"`: the counters as `shardmq_<field>_total`, the per-shard gauges (`sessions`,
//!   `subscriptions`, `queued_messages`, `retained`) as `shardmq_<field>`;
//! - families with a second label, from the stats' arrays: `shardmq_publish_received_total`,
//!   `shardmq_publish_received_bytes_total`, `shardmq_publish_sent_total` and
//!   `shardmq_publish_sent_bytes_total` by `qos` (`0`, `1`, `2`);
//!   `shardmq_connack_refusals_total`, `shardmq_disconnects_total` and
//!   `shardmq_messages_dropped_total` by `reason` (see `families.rs` for the values);
//! - `shardmq_publish_latency_seconds`: a histogram per shard of the time from reading a
//!   PUBLISH to writing a delivery of it for a connected subscriber (buckets 10 µs to 1 s);
//! - `shardmq_connections`: open client connections, all shards (gauge);
//! - `shardmq_up`: 1 while every shard runs, 0 once one failed or the broker is stopping.
//!
//! `/healthz` answers 200 `ok` while [`StatsSource::healthy`] holds, 503 otherwise. Other paths
//! get 404, other methods on these paths 405.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;

use crate::broker::StatsSource;

mod families;

use families::BrokerCollector;

/// The `Content-Type` of `/metrics`: the Prometheus text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The metric name prefix.
const PREFIX: &str = "shardmq";
/// Most bytes of a request read (request line and headers).
const REQUEST_LIMIT: usize = 8 * 1024;
/// Time a client has to send its request, and each write of the answer may take.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Most request headers parsed.
const MAX_HEADERS: usize = 32;
/// Pause after a failed `accept` (e.g. out of file descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A running metrics endpoint. Its thread stops on [`MetricsServer::shutdown`] or drop.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Binds `addr` and serves `/metrics` and `/healthz` from `source` on a thread of its own.
/// Fails only if the address cannot be bound or the thread cannot be started.
pub fn spawn(addr: SocketAddr, source: StatsSource) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)?;
    let local_addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new().name("metrics".into()).spawn({
        let stop = Arc::clone(&stop);
        move || Server::new(source).run(&listener, &stop)
    })?;
    Ok(MetricsServer {
        local_addr,
        stop,
        thread: Some(thread),
    })
}

impl MetricsServer {
    /// The bound address (the port resolved when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and waits for the thread to end (after the request it is answering, if
    /// any: at most a few seconds). Calling it again does nothing.
    pub fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // The thread blocks in accept(): a connection of our own wakes it to see the flag.
        let woken = TcpStream::connect_timeout(&wake_addr(self.local_addr), IO_TIMEOUT);
        if woken.is_ok() || thread.is_finished() {
            if thread.join().is_err() {
                tracing::error!("the metrics thread panicked");
            }
        } else if let Err(error) = woken {
            // Not joined, so that shutting down never hangs here; the thread is left behind.
            tracing::warn!(%error, addr = %self.local_addr, "cannot wake the metrics thread");
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where to connect to reach a listener bound to `addr` (a wildcard address is reached
/// through the loopback address of its family).
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        other => other.ip(),
    };
    SocketAddr::new(ip, addr.port())
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    Healthz,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    TooLarge,
    Timeout,
}

/// The serving thread's state: the registry and buffers reused from one request to the next.
struct Server {
    source: StatsSource,
    registry: Registry,
    body: String,
    out: Vec<u8>,
}

impl Server {
    fn new(source: StatsSource) -> Server {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(BrokerCollector {
            source: source.clone(),
        }));
        Server {
            source,
            registry,
            body: String::new(),
            out: Vec::new(),
        }
    }

    fn run(&mut self, listener: &TcpListener, stop: &AtomicBool) {
        for stream in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            match stream {
                Ok(stream) => {
                    if let Err(error) = self.handle(stream) {
                        tracing::debug!(%error, "metrics request not answered");
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "metrics listener: accept failed");
                    std::thread::sleep(ACCEPT_BACKOFF);
                }
            }
        }
    }

    /// Reads one request and answers it; the connection is closed on return.
    fn handle(&mut self, mut stream: TcpStream) -> io::Result<()> {
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let Some(route) = read_request(&mut stream)? else {
            return Ok(()); // The client left before sending a whole request.
        };
        self.body.clear();
        let (status, content_type, extra) = match route {
            Route::Metrics => match prometheus_text::encode(&mut self.body, &self.registry) {
                Ok(()) => ("200 OK", CONTENT_TYPE, ""),
                Err(fmt::Error) => {
                    self.body.clear();
                    self.body.push_str("cannot encode the metrics\n");
                    ("500 Internal Server Error", TEXT, "")
                }
            },
            Route::Healthz if self.source.healthy() => {
                self.body.push_str("ok\n");
                ("200 OK", TEXT, "")
            }
            Route::Healthz => {
                self.body.push_str("unavailable\n");
                ("503 Service Unavailable", TEXT, "")
            }
            Route::NotFound => {
                self.body.push_str("not found: try /metrics or /healthz\n");
                ("404 Not Found", TEXT, "")
            }
            Route::MethodNotAllowed => {
                self.body.push_str("method not allowed\n");
                ("405 Method Not Allowed", TEXT, "Allow: GET\r\n")
            }
            Route::BadRequest => {
                self.body.push_str("bad request\n");
                ("400 Bad Request", TEXT, "")
            }
            Route::TooLarge => {
                self.body.push_str("request too large\n");
                ("431 Request Header Fields Too Large", TEXT, "")
            }
            Route::Timeout => {
                self.body.push_str("request timeout\n");
                ("408 Request Timeout", TEXT, "")
            }
        };
        // One write for head and body: two small writes would meet Nagle and delayed ACKs.
        self.out.clear();
        write!(
            self.out,
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n{extra}\r\n",
            self.body.len()
        )?;
        self.out.extend_from_slice(self.body.as_bytes());
        stream.write_all(&self.out)?;
        stream.shutdown(Shutdown::Write)
    }
}

/// The `Content-Type` of the plain-text answers.
const TEXT: &str = "text/plain; charset=utf-8";

/// Reads until the request line and headers are complete (a body, if any, is ignored), at most
/// [`REQUEST_LIMIT`] bytes within [`IO_TIMEOUT`]. `None` if the client closed first.
fn read_request(stream: &mut TcpStream) -> io::Result<Option<Route>> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [0u8; REQUEST_LIMIT];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Some(Route::Timeout));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(None),
            Ok(n) => len += n,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(Some(Route::Timeout))
            }
            Err(error) => return Err(error),
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let method = request.method.unwrap_or_default();
                let target = request.path.unwrap_or_default();
                return Ok(Some(route(method, target)));
            }
            Ok(httparse::Status::Partial) if len == buf.len() => return Ok(Some(Route::TooLarge)),
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Ok(Some(Route::TooLarge)),
            Err(_) => return Ok(Some(Route::BadRequest)),
        }
    }
}

/// The answer to `method` on `target` (a query string is ignored).
fn route(method: &str, target: &str) -> Route {
    let path = target.split('?').next().unwrap_or_default();
    let route = match path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Healthz,
        _ => return Route::NotFound,
    };
    if method == "GET" {
        route
    } else {
        Route::MethodNotAllowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("GET", "/metrics"), Route::Metrics);
        assert_eq!(route("GET", "/metrics?x=1"), Route::Metrics);
        assert_eq!(route("GET", "/healthz"), Route::Healthz);
        assert_eq!(route("GET", "/"), Route::NotFound);
        assert_eq!(route("GET", "/metrics/"), Route::NotFound);
        assert_eq!(route("POST", "/metrics"), Route::MethodNotAllowed);
        assert_eq!(route("HEAD", "/healthz"), Route::MethodNotAllowed);
        assert_eq!(route("POST", "/nowhere"), Route::NotFound);
    }

    #[test]
    fn wake_addresses() {
        let addr = |text: &str| -> SocketAddr { text.parse().unwrap() };
        assert_eq!(wake_addr(addr("0.0.0.0:9100")), addr("127.0.0.1:9100"));
        assert_eq!(wake_addr(addr("[::]:9100")), addr("[::1]:9100"));
        assert_eq!(wake_addr(addr("127.0.0.2:9100")), addr("127.0.0.2:9100"));
    }
}
