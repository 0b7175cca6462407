//! The `/admin` endpoints of the metrics listener, behind a bearer token (`admin_token`):
//!
//! - `GET /admin/clients[?limit=N]`: the connected clients (default 1000, at most 10000);
//! - `POST /admin/clients/<id>/disconnect`: closes a client's connection (MQTT 5.0: DISCONNECT
//!   0x98 administrative action first); its will is published;
//! - `DELETE /admin/sessions/<id>`: removes a session, connected or not (a connection is closed
//!   first): subscriptions and queued messages are discarded, the next CONNECT starts afresh.
//!
//! `<id>` is the client id, percent-encoded (a `/` in it as `%2F`). Without a configured token
//! every `/admin` path answers 404; with one, a request without `Authorization: Bearer <token>`
//! or with another token gets 401 with `WWW-Authenticate: Bearer`, whatever the path. Answers
//! are JSON (`Cache-Control: no-store`); errors are `{"error": "..."}`.
//!
//! The work itself happens on the shards ([`crate::broker::admin`]); this module is the HTTP
//! side: routing (pure, unit-tested), authentication and the JSON bodies.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::broker::admin::{Admin, AdminError, ClientInfo, SessionOutcome, SessionReport};
use crate::codec::ProtocolVersion;

/// Clients listed when the request names no limit.
pub const DEFAULT_LIMIT: usize = 1000;
/// Most clients listed, whatever the request asks.
pub const MAX_LIMIT: usize = 10_000;

/// The realm named in `WWW-Authenticate`.
const REALM: &str = "shardmq";

/// What an `/admin` request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AdminRoute {
    /// `GET /admin/clients`.
    Clients {
        /// Most clients listed (the query's `limit`, capped).
        limit: usize,
    },
    /// `POST /admin/clients/<id>/disconnect`.
    Disconnect {
        /// The decoded client id.
        client_id: String,
    },
    /// `DELETE /admin/sessions/<id>`.
    DeleteSession {
        /// The decoded client id.
        client_id: String,
    },
    /// A known path, another method: the one allowed.
    MethodNotAllowed {
        /// The `Allow` header's value.
        allow: &'static str,
    },
    /// A malformed client id or query.
    BadRequest(&'static str),
    /// No such endpoint.
    NotFound,
}

/// Whether `path` (without a query) is one of the admin paths, all of which 404 while
/// administration is disabled.
pub(super) fn is_admin_path(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

/// Routes an `/admin` request by method and target (path and query).
pub(super) fn route(method: &str, target: &str) -> AdminRoute {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (allow, wanted) = match segments.as_slice() {
        ["admin", "clients"] => ("GET", Wanted::Clients),
        ["admin", "clients", id, "disconnect"] => ("POST", Wanted::Disconnect(id)),
        ["admin", "sessions", id] => ("DELETE", Wanted::Delete(id)),
        _ => return AdminRoute::NotFound,
    };
    if method != allow {
        return AdminRoute::MethodNotAllowed { allow };
    }
    let client_id = |segment: &str| -> Result<String, AdminRoute> {
        match percent_decode(segment) {
            Some(id) if !id.is_empty() && !id.contains('\0') => Ok(id),
            Some(_) => Err(AdminRoute::BadRequest("empty client id")),
            None => Err(AdminRoute::BadRequest(
                "the client id is not percent-encoded UTF-8",
            )),
        }
    };
    let routed = match wanted {
        Wanted::Clients => match limit(query) {
            Some(limit) => Ok(AdminRoute::Clients { limit }),
            None => Err(AdminRoute::BadRequest(
                "limit must be a non-negative integer",
            )),
        },
        Wanted::Disconnect(id) => {
            client_id(id).map(|client_id| AdminRoute::Disconnect { client_id })
        }
        Wanted::Delete(id) => {
            client_id(id).map(|client_id| AdminRoute::DeleteSession { client_id })
        }
    };
    routed.unwrap_or_else(|error| error)
}

enum Wanted<'a> {
    Clients,
    Disconnect(&'a str),
    Delete(&'a str),
}

/// The `limit` of a query string: [`DEFAULT_LIMIT`] when absent, capped at [`MAX_LIMIT`];
/// `None` when it is not a number. Other parameters are ignored.
fn limit(query: &str) -> Option<usize> {
    let mut limit = DEFAULT_LIMIT;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "limit" {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Digits only: a parse failure is an overflow, which the cap covers.
            limit = value.parse::<usize>().unwrap_or(MAX_LIMIT);
        }
    }
    Some(limit.min(MAX_LIMIT))
}

/// Decodes `%XX` escapes (a path segment: `+` stays `+`); `None` for a bad escape or bytes
/// that are not UTF-8.
pub(super) fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case).
pub(super) fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// An answer to an admin request.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: &'static str,
    /// Extra header lines, each ending in CRLF.
    pub(super) headers: String,
    pub(super) body: String,
}

impl Answer {
    fn json(status: &'static str, body: &Value) -> Answer {
        let mut body = body.to_string();
        body.push('\n');
        Answer {
            status,
            headers: String::new(),
            body,
        }
    }

    fn error(status: &'static str, message: &str) -> Answer {
        Answer::json(status, &json!({ "error": message }))
    }
}

/// Whether the request may use the admin endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// No token is configured: every admin path is 404.
    Disabled,
    /// No `Authorization: Bearer` header.
    Missing,
    /// Another token.
    Invalid,
    /// The configured token.
    Granted,
}

/// Checks the request's `Authorization` header against the configured token.
pub(super) fn access(admin: Option<&Admin>, authorization: Option<&str>) -> Access {
    let Some(admin) = admin.filter(|a| a.enabled()) else {
        return Access::Disabled;
    };
    match authorization.and_then(bearer) {
        None => Access::Missing,
        Some(token) if admin.authorized(token) => Access::Granted,
        Some(_) => Access::Invalid,
    }
}

/// Answers an admin request (`route` is what [`route`] made of it).
pub(super) fn answer(admin: Option<&Admin>, access: Access, route: AdminRoute) -> Answer {
    let admin = match (access, admin) {
        (Access::Granted, Some(admin)) => admin,
        (Access::Disabled, _) | (Access::Granted, None) => {
            return Answer::error("404 Not Found", "not found")
        }
        (Access::Missing, _) => {
            let mut answer = Answer::error("401 Unauthorized", "a bearer token is required");
            answer.headers = format!("WWW-Authenticate: Bearer realm=\"{REALM}\"\r\n");
            return answer;
        }
        (Access::Invalid, _) => {
            let mut answer = Answer::error("401 Unauthorized", "invalid token");
            answer.headers =
                format!("WWW-Authenticate: Bearer realm=\"{REALM}\", error=\"invalid_token\"\r\n");
            return answer;
        }
    };
    match route {
        AdminRoute::Clients { limit } => match admin.clients(limit) {
            Ok(list) => {
                let now = unix_now();
                let clients: Vec<Value> =
                    list.clients.iter().map(|c| client_json(c, now)).collect();
                Answer::json(
                    "200 OK",
                    &json!({
                        "total": list.total,
                        "returned": clients.len(),
                        "limit": limit,
                        "truncated": clients.len() < list.total,
                        "clients": clients,
                    }),
                )
            }
            Err(error) => unavailable(&error),
        },
        AdminRoute::Disconnect { client_id } => match admin.disconnect(&client_id) {
            Ok(SessionOutcome::Done(report)) => {
                Answer::json("200 OK", &session_json(&client_id, "disconnected", &report))
            }
            Ok(SessionOutcome::NotConnected) => Answer::json(
                "404 Not Found",
                &json!({
                    "error": "not connected (its session is stored)",
                    "client_id": client_id,
                }),
            ),
            Ok(outcome) => not_found(&client_id, &outcome),
            Err(error) => unavailable(&error),
        },
        AdminRoute::DeleteSession { client_id } => match admin.delete_session(&client_id) {
            Ok(SessionOutcome::Done(report)) => {
                Answer::json("200 OK", &session_json(&client_id, "deleted", &report))
            }
            Ok(outcome) => not_found(&client_id, &outcome),
            Err(error) => unavailable(&error),
        },
        AdminRoute::MethodNotAllowed { allow } => {
            let mut answer = Answer::error("405 Method Not Allowed", "method not allowed");
            answer.headers = format!("Allow: {allow}\r\n");
            answer
        }
        AdminRoute::BadRequest(why) => Answer::error("400 Bad Request", why),
        AdminRoute::NotFound => Answer::error(
            "404 Not Found",
            "not found: GET /admin/clients, POST /admin/clients/<id>/disconnect, \
             DELETE /admin/sessions/<id>",
        ),
    }
}

fn not_found(client_id: &str, outcome: &SessionOutcome) -> Answer {
    let error = if *outcome == SessionOutcome::InTransit {
        "not found: the client id is moving between shards, try again"
    } else {
        "no such client"
    };
    Answer::json(
        "404 Not Found",
        &json!({ "error": error, "client_id": client_id }),
    )
}

fn unavailable(error: &AdminError) -> Answer {
    let mut answer = Answer::error("503 Service Unavailable", &error.to_string());
    answer.headers = "Retry-After: 1\r\n".into();
    answer
}

/// `"3.1"`, `"3.1.1"` or `"5.0"`.
fn protocol_name(protocol: ProtocolVersion) -> &'static str {
    match protocol {
        ProtocolVersion::V3_1 => "3.1",
        ProtocolVersion::V3_1_1 => "3.1.1",
        ProtocolVersion::V5 => "5.0",
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn client_json(client: &ClientInfo, now: u64) -> Value {
    json!({
        "client_id": client.client_id,
        "address": client.address.map(|a| a.to_string()),
        "username": client.username,
        "protocol": protocol_name(client.protocol),
        "shard": client.shard,
        "clean_session": client.clean,
        "queued": client.queued,
        "inflight": client.inflight,
        "connected_secs": client.connected_secs,
        "connected_since": now.saturating_sub(client.connected_secs),
    })
}

fn session_json(client_id: &str, done: &str, report: &SessionReport) -> Value {
    let mut body = json!({
        "client_id": client_id,
        "shard": report.shard,
        "protocol": protocol_name(report.protocol),
        "was_connected": report.was_connected,
        "will": report.will,
        "subscriptions": report.subscriptions,
        "queued": report.queued,
        "inflight": report.inflight,
    });
    body[done] = Value::Bool(true);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        use AdminRoute::*;
        assert_eq!(
            route("GET", "/admin/clients"),
            Clients {
                limit: DEFAULT_LIMIT
            }
        );
        assert_eq!(route("GET", "/admin/clients?limit=5"), Clients { limit: 5 });
        assert_eq!(
            route("GET", "/admin/clients?x=1&limit=0"),
            Clients { limit: 0 }
        );
        assert_eq!(
            route("GET", "/admin/clients?limit=99999999999999999999999"),
            Clients { limit: MAX_LIMIT }
        );
        assert_eq!(
            route("GET", "/admin/clients?limit=20000"),
            Clients { limit: MAX_LIMIT }
        );
        assert!(matches!(
            route("GET", "/admin/clients?limit=-1"),
            BadRequest(_)
        ));
        assert!(matches!(
            route("GET", "/admin/clients?limit="),
            BadRequest(_)
        ));
        assert_eq!(
            route("POST", "/admin/clients"),
            MethodNotAllowed { allow: "GET" }
        );
        assert_eq!(
            route("POST", "/admin/clients/sensor%2F1%20a+b/disconnect"),
            Disconnect {
                client_id: "sensor/1 a+b".into()
            }
        );
        assert_eq!(
            route("GET", "/admin/clients/x/disconnect"),
            MethodNotAllowed { allow: "POST" }
        );
        assert_eq!(
            route("DELETE", "/admin/sessions/caf%C3%A9"),
            DeleteSession {
                client_id: "café".into()
            }
        );
        assert_eq!(
            route("GET", "/admin/sessions/x"),
            MethodNotAllowed { allow: "DELETE" }
        );
        assert!(matches!(route("DELETE", "/admin/sessions/"), BadRequest(_)));
        assert!(matches!(
            route("DELETE", "/admin/sessions/%zz"),
            BadRequest(_)
        ));
        assert!(matches!(
            route("DELETE", "/admin/sessions/%FF"),
            BadRequest(_)
        ));
        assert!(matches!(
            route("DELETE", "/admin/sessions/a%00"),
            BadRequest(_)
        ));
        assert_eq!(route("GET", "/admin"), NotFound);
        assert_eq!(route("GET", "/admin/"), NotFound);
        assert_eq!(route("GET", "/admin/clients/"), NotFound);
        assert_eq!(route("DELETE", "/admin/sessions/a/b"), NotFound);
        assert_eq!(route("POST", "/admin/clients/a/kick"), NotFound);
        assert!(is_admin_path("/admin") && is_admin_path("/admin/x"));
        assert!(!is_admin_path("/administrator") && !is_admin_path("/metrics"));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("%41%42c").as_deref(), Some("ABc"));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%+1"), None);
        assert_eq!(percent_decode("%C3"), None);
        assert_eq!(percent_decode("").as_deref(), Some(""));
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }

    #[test]
    fn access_needs_the_configured_token() {
        assert_eq!(access(None, Some("Bearer x")), Access::Disabled);
    }
}
