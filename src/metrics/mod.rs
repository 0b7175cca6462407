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
//!
//! With an [`Admin`] handle ([`spawn_with_admin`]) the same listener serves the `/admin`
//! endpoints behind a bearer token (`src/metrics/admin.rs`); they are the only requests that
//! reach the shards, over a request channel per shard, and may hold the thread for up to a few
//! seconds (a scrape waits meanwhile). A request body (which no endpoint needs) is read and
//! discarded within the same 8 KiB and 2 s, so that closing the connection never resets it
//! before the answer is read.

mod admin;

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;

use crate::broker::admin::Admin;
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
    spawn_with_admin(addr, source, None)
}

/// [`spawn`], with the `/admin` endpoints served through `admin` (they answer 404 while it has
/// no token, or without it).
pub fn spawn_with_admin(
    addr: SocketAddr,
    source: StatsSource,
    admin: Option<Admin>,
) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)?;
    let local_addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new().name("metrics".into()).spawn({
        let stop = Arc::clone(&stop);
        move || Server::new(source, admin).run(&listener, &stop)
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
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Metrics,
    Healthz,
    /// An `/admin` path (answered 404 while administration is disabled).
    Admin(admin::AdminRoute),
    NotFound,
    MethodNotAllowed,
    BadRequest,
    TooLarge,
    PayloadTooLarge,
    Timeout,
}

/// A request as read: its route, and its `Authorization` header for the admin endpoints.
#[derive(Debug)]
struct Request {
    route: Route,
    authorization: Option<String>,
}

impl From<Route> for Request {
    fn from(route: Route) -> Request {
        Request {
            route,
            authorization: None,
        }
    }
}

/// The serving thread's state: the registry and buffers reused from one request to the next.
struct Server {
    source: StatsSource,
    admin: Option<Admin>,
    registry: Registry,
    body: String,
    out: Vec<u8>,
}

impl Server {
    fn new(source: StatsSource, admin: Option<Admin>) -> Server {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(BrokerCollector {
            source: source.clone(),
        }));
        Server {
            source,
            admin,
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
        let Some(request) = read_request(&mut stream)? else {
            return Ok(()); // The client left before sending a whole request.
        };
        self.body.clear();
        let route = match request.route {
            Route::Admin(route) => {
                let access = admin::access(self.admin.as_ref(), request.authorization.as_deref());
                if access == admin::Access::Disabled {
                    // Administration is off: as if the path did not exist.
                    Route::NotFound
                } else {
                    if access == admin::Access::Invalid {
                        let peer = stream
                            .peer_addr()
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        tracing::warn!(%peer, "admin request with an invalid token refused");
                    }
                    let answer = admin::answer(self.admin.as_ref(), access, route);
                    self.body.push_str(&answer.body);
                    // Client lists and the like are not for caches.
                    let headers = format!("Cache-Control: no-store\r\n{}", answer.headers);
                    return self.send(&mut stream, answer.status, JSON, &headers);
                }
            }
            other => other,
        };
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
            Route::NotFound | Route::Admin(_) => {
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
            Route::PayloadTooLarge => {
                self.body.push_str("request body too large\n");
                ("413 Content Too Large", TEXT, "")
            }
            Route::Timeout => {
                self.body.push_str("request timeout\n");
                ("408 Request Timeout", TEXT, "")
            }
        };
        self.send(&mut stream, status, content_type, extra)
    }

    /// Writes the answer (`self.body`, with `extra` header lines) and ends the connection.
    fn send(
        &mut self,
        stream: &mut TcpStream,
        status: &str,
        content_type: &str,
        extra: &str,
    ) -> io::Result<()> {
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
/// The `Content-Type` of the admin answers.
const JSON: &str = "application/json";

/// Reads the request line and headers, then a body if one is announced (and discards it), at
/// most [`REQUEST_LIMIT`] bytes in all within [`IO_TIMEOUT`]. `None` if the client closed first.
fn read_request(stream: &mut TcpStream) -> io::Result<Option<Request>> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = [0u8; REQUEST_LIMIT];
    let mut len = 0;
    // Once the head is parsed: the request, and the request's total length (head and body).
    let mut parsed: Option<(Request, usize)> = None;
    loop {
        if let Some((_, total)) = &parsed {
            if len >= *total {
                return Ok(parsed.map(|(request, _)| request));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Some(Route::Timeout.into()));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(None),
            Ok(n) => len += n,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Ok(Some(Route::Timeout.into()))
            }
            Err(error) => return Err(error),
        }
        if parsed.is_some() {
            continue;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(head)) => {
                let body = match body_length(request.headers) {
                    Ok(body) => body,
                    Err(route) => return Ok(Some(route.into())),
                };
                let Some(total) = head.checked_add(body).filter(|&t| t <= buf.len()) else {
                    return Ok(Some(Route::PayloadTooLarge.into()));
                };
                let method = request.method.unwrap_or_default();
                let target = request.path.unwrap_or_default();
                let authorization = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(str::to_string);
                let request = Request {
                    route: route(method, target),
                    authorization,
                };
                parsed = Some((request, total));
            }
            Ok(httparse::Status::Partial) if len == buf.len() => {
                return Ok(Some(Route::TooLarge.into()))
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Ok(Some(Route::TooLarge.into())),
            Err(_) => return Ok(Some(Route::BadRequest.into())),
        }
    }
}

/// The length of the body the headers announce (0 without `Content-Length`); a chunked or
/// otherwise unreadable body is a bad request.
fn body_length(headers: &[httparse::Header<'_>]) -> Result<usize, Route> {
    let mut length = None;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Route::BadRequest);
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .ok_or(Route::BadRequest)?;
            // Digits only: a parse failure is an overflow.
            let value = value.parse::<usize>().map_err(|_| Route::PayloadTooLarge)?;
            if length.is_some_and(|l| l != value) {
                return Err(Route::BadRequest);
            }
            length = Some(value);
        }
    }
    Ok(length.unwrap_or(0))
}

/// The answer to `method` on `target` (a query string is ignored).
fn route(method: &str, target: &str) -> Route {
    let path = target.split('?').next().unwrap_or_default();
    if admin::is_admin_path(path) {
        return Route::Admin(admin::route(method, target));
    }
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
        assert_eq!(
            route("GET", "/admin/clients?limit=3"),
            Route::Admin(admin::AdminRoute::Clients { limit: 3 })
        );
        assert_eq!(
            route("DELETE", "/admin/nowhere"),
            Route::Admin(admin::AdminRoute::NotFound)
        );
        assert_eq!(route("GET", "/administrator"), Route::NotFound);
    }

    #[test]
    fn body_lengths() {
        let header = |name: &'static str, value: &'static [u8]| httparse::Header { name, value };
        assert_eq!(body_length(&[]), Ok(0));
        assert_eq!(body_length(&[header("Content-Length", b" 12 ")]), Ok(12));
        assert_eq!(
            body_length(&[
                header("content-length", b"3"),
                header("Content-Length", b"3")
            ]),
            Ok(3)
        );
        assert_eq!(
            body_length(&[
                header("content-length", b"3"),
                header("Content-Length", b"4")
            ]),
            Err(Route::BadRequest)
        );
        assert_eq!(
            body_length(&[header("Content-Length", b"-1")]),
            Err(Route::BadRequest)
        );
        assert_eq!(
            body_length(&[header("Content-Length", b"99999999999999999999999")]),
            Err(Route::PayloadTooLarge)
        );
        assert_eq!(
            body_length(&[header("Transfer-Encoding", b"chunked")]),
            Err(Route::BadRequest)
        );
    }

    #[test]
    fn wake_addresses() {
        let addr = |text: &str| -> SocketAddr { text.parse().unwrap() };
        assert_eq!(wake_addr(addr("0.0.0.0:9100")), addr("127.0.0.1:9100"));
        assert_eq!(wake_addr(addr("[::]:9100")), addr("[::1]:9100"));
        assert_eq!(wake_addr(addr("127.0.0.2:9100")), addr("127.0.0.2:9100"));
    }
}
