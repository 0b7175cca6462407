//! The opening handshake (RFC 6455 §4.2): the HTTP/1.1 upgrade request, parsed with
//! `httparse`, and the answers: `101 Switching Protocols`, or an HTTP error and a close.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::{BufMut, BytesMut};
use sha1::{Digest, Sha1};

use super::{Subprotocol, WsConfig};

/// The most headers a request may carry (more is answered 431).
const MAX_HEADERS: usize = 32;

/// The GUID RFC 6455 appends to the client's key.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request was refused. [`HandshakeError::status`] is the HTTP status answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The request head is larger than [`WsConfig::max_request_size`], or has too many
    /// headers (431).
    #[error("request head too large")]
    TooLarge,
    /// Not an HTTP request (400).
    #[error("malformed HTTP request: {0}")]
    Malformed(httparse::Error),
    /// Not HTTP/1.1 (400).
    #[error("the upgrade needs HTTP/1.1")]
    HttpVersion,
    /// Not a GET (405).
    #[error("the method is not GET")]
    Method,
    /// A path other than [`WsConfig::path`] (404).
    #[error("no WebSocket endpoint at this path")]
    NotFound,
    /// No `Host` header (400).
    #[error("no Host header")]
    MissingHost,
    /// A request with a body (400).
    #[error("an upgrade request carries no body")]
    Body,
    /// No `Upgrade: websocket` (426).
    #[error("not a WebSocket upgrade (Upgrade: websocket)")]
    NotWebSocket,
    /// `Connection` does not list `upgrade` (400).
    #[error("the Connection header does not list upgrade")]
    ConnectionNotUpgrade,
    /// `Sec-WebSocket-Version` missing or not 13 (426, naming version 13).
    #[error("Sec-WebSocket-Version missing or other than 13")]
    Version,
    /// `Sec-WebSocket-Key` missing, repeated, or not 16 bytes in base64 (400).
    #[error("Sec-WebSocket-Key missing, repeated or not 16 bytes in base64")]
    Key,
    /// The client offered subprotocols, none of them `mqtt` or `mqttv3.1` (400, as EMQX does).
    #[error("none of the offered subprotocols is mqtt or mqttv3.1")]
    Subprotocol,
}

impl HandshakeError {
    /// The HTTP status the refusal is answered with.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::TooLarge => 431,
            HandshakeError::Method => 405,
            HandshakeError::NotFound => 404,
            HandshakeError::NotWebSocket | HandshakeError::Version => 426,
            HandshakeError::Malformed(_)
            | HandshakeError::HttpVersion
            | HandshakeError::MissingHost
            | HandshakeError::Body
            | HandshakeError::ConnectionNotUpgrade
            | HandshakeError::Key
            | HandshakeError::Subprotocol => 400,
        }
    }

    fn reason_phrase(&self) -> &'static str {
        match self.status() {
            404 => "Not Found",
            405 => "Method Not Allowed",
            426 => "Upgrade Required",
            431 => "Request Header Fields Too Large",
            _ => "Bad Request",
        }
    }
}

/// A request the server accepts.
#[derive(Debug)]
pub(super) struct Accepted {
    /// The length of the request head: the bytes after it are frames.
    pub(super) head_len: usize,
    accept: [u8; 28],
    pub(super) subprotocol: Option<Subprotocol>,
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: the base64 of the SHA-1 of the
/// key and RFC 6455's GUID.
pub fn sec_websocket_accept(key: &[u8]) -> [u8; 28] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    let digest = sha.finalize();
    let mut accept = [0u8; 28];
    // 20 bytes are 28 base64 characters: the slice fits.
    let written = BASE64.encode_slice(digest, &mut accept);
    debug_assert_eq!(written, Ok(accept.len()));
    accept
}

/// Parses the request head in `buf`: `None` while it is incomplete.
pub(super) fn parse(buf: &[u8], config: &WsConfig) -> Result<Option<Accepted>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooLarge),
        Err(error) => return Err(HandshakeError::Malformed(error)),
    };
    if request.method != Some("GET") {
        return Err(HandshakeError::Method);
    }
    if request.version != Some(1) {
        return Err(HandshakeError::HttpVersion);
    }
    if let Some(path) = &config.path {
        if request_path(request.path.unwrap_or_default()) != path.as_str() {
            return Err(HandshakeError::NotFound);
        }
    }
    let headers = request.headers;
    if !headers.iter().any(|h| h.name.eq_ignore_ascii_case("host")) {
        return Err(HandshakeError::MissingHost);
    }
    let has_body = headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
    });
    if has_body {
        return Err(HandshakeError::Body);
    }
    if !has_token(headers, "upgrade", b"websocket") {
        return Err(HandshakeError::NotWebSocket);
    }
    if !has_token(headers, "connection", b"upgrade") {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    let mut versions = values(headers, "sec-websocket-version");
    if versions.next() != Some(b"13") || versions.next().is_some() {
        return Err(HandshakeError::Version);
    }
    let mut keys = values(headers, "sec-websocket-key");
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(HandshakeError::Key);
    };
    if !valid_key(key) {
        return Err(HandshakeError::Key);
    }
    Ok(Some(Accepted {
        head_len,
        accept: sec_websocket_accept(key),
        subprotocol: choose_subprotocol(headers)?,
    }))
}

/// The path of a request target: without the query, and without the scheme and authority of
/// an absolute-form target.
pub(super) fn request_path(target: &str) -> &str {
    let path = match target.split_once("://") {
        Some((scheme, rest)) if !scheme.contains('/') => {
            rest.find('/').map_or("/", |at| &rest[at..])
        }
        _ => target,
    };
    path.split_once('?').map_or(path, |(path, _)| path)
}

/// The trimmed values of every header named `name`.
fn values<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'static str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.trim_ascii())
}

/// The non-empty comma-separated tokens of every header named `name`.
fn tokens<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'static str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    values(headers, name)
        .flat_map(|value| value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// Whether a header named `name` lists `token` (ASCII case-insensitive).
fn has_token(headers: &[httparse::Header<'_>], name: &'static str, token: &[u8]) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Whether a `Sec-WebSocket-Key` is 16 bytes in base64.
fn valid_key(key: &[u8]) -> bool {
    let mut decoded = [0u8; 24];
    key.len() == 24 && BASE64.decode_slice(key, &mut decoded) == Ok(16)
}

/// `mqtt` if the client offers it, else `mqttv3.1`; no subprotocol if it offers none; a
/// refusal if it offers only others (tokens compare exactly, as the answer must echo one).
fn choose_subprotocol(
    headers: &[httparse::Header<'_>],
) -> Result<Option<Subprotocol>, HandshakeError> {
    let mut offered = false;
    let mut v31 = false;
    for token in tokens(headers, "sec-websocket-protocol") {
        offered = true;
        if token == Subprotocol::Mqtt.as_str().as_bytes() {
            return Ok(Some(Subprotocol::Mqtt));
        }
        v31 |= token == Subprotocol::MqttV31.as_str().as_bytes();
    }
    match (v31, offered) {
        (true, _) => Ok(Some(Subprotocol::MqttV31)),
        (false, true) => Err(HandshakeError::Subprotocol),
        (false, false) => Ok(None),
    }
}

/// Appends the `101 Switching Protocols` answer.
pub(super) fn put_accept(out: &mut BytesMut, accepted: &Accepted) {
    out.reserve(160);
    out.put_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.put_slice(&accepted.accept);
    out.put_slice(b"\r\n");
    if let Some(subprotocol) = accepted.subprotocol {
        out.put_slice(b"Sec-WebSocket-Protocol: ");
        out.put_slice(subprotocol.as_str().as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"\r\n");
}

/// Appends the HTTP answer to a refused request (the connection closes after it).
pub(super) fn put_refusal(out: &mut BytesMut, error: &HandshakeError) {
    let extra = match error {
        HandshakeError::Method => "Allow: GET\r\n",
        HandshakeError::NotWebSocket | HandshakeError::Version => {
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        }
        _ => "",
    };
    let body = format!("{error}\n");
    let head = format!(
        "HTTP/1.1 {} {}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}\r\n",
        error.status(),
        error.reason_phrase(),
        body.len(),
    );
    out.put_slice(head.as_bytes());
    out.put_slice(body.as_bytes());
}
