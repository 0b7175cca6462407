use std::sync::Arc;

use bytes::BytesMut;
use proptest::prelude::*;

use super::frame::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};
use super::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// An MQTT 3.1.1 CONNECT (client id "a", clean session, keep-alive 60).
const CONNECT: &[u8] = &[
    0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x01, b'a',
];

fn server() -> WsServer {
    WsServer::new(Arc::new(WsConfig::default()))
}

fn server_with(config: WsConfig) -> WsServer {
    WsServer::new(Arc::new(config))
}

/// An upgrade request with the usual headers, `replace` overriding or (with an empty value)
/// removing them by name, `add` appended.
fn request_with(target: &str, replace: &[(&str, &str)], add: &[(&str, &str)]) -> Vec<u8> {
    let defaults = [
        ("Host", "localhost:8080"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "mqtt"),
    ];
    let mut text = format!("GET {target} HTTP/1.1\r\n");
    for (name, value) in defaults {
        let value = replace
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(value, |(_, v)| *v);
        if !value.is_empty() {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    for (name, value) in add {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

fn request() -> Vec<u8> {
    request_with("/mqtt", &[], &[])
}

/// A client frame: `first` is FIN/RSV/opcode, the length in its shortest form.
fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    client_frame_form(first, payload, mask, None)
}

/// A client frame with its length in a chosen form (`Some(126)`, `Some(127)`) or the shortest.
fn client_frame_form(first: u8, payload: &[u8], mask: [u8; 4], form: Option<u8>) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![first];
    match form {
        None if len < 126 => out.push(0x80 | len as u8),
        None if len <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        Some(126) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn binary(payload: &[u8]) -> Vec<u8> {
    client_frame(0x80 | OP_BINARY, payload, [0x37, 0xfa, 0x21, 0x3d])
}

/// Feeds `input` in one call.
fn feed(ws: &mut WsServer, input: &[u8]) -> (Result<WsEvent, WsError>, BytesMut, BytesMut) {
    let mut app = BytesMut::new();
    let mut wire = BytesMut::new();
    let result = ws.on_bytes(input, &mut app, &mut wire);
    (result, app, wire)
}

/// A server past the handshake.
fn open() -> WsServer {
    let mut ws = server();
    let (result, app, _) = feed(&mut ws, &request());
    assert_eq!(result, Ok(WsEvent::Upgraded));
    assert!(app.is_empty());
    ws
}

/// Splits server output into frames: (first byte, payload). Server frames are never masked.
fn server_frames(mut wire: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while !wire.is_empty() {
        let first = wire[0];
        assert_eq!(wire[1] & 0x80, 0, "server frames are not masked");
        let (len, at) = match wire[1] & 0x7f {
            126 => (u16::from_be_bytes([wire[2], wire[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(wire[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        frames.push((first, wire[at..at + len].to_vec()));
        wire = &wire[at + len..];
    }
    frames
}

fn close_frame(code: u16) -> Vec<u8> {
    vec![0x88, 0x02, (code >> 8) as u8, code as u8]
}

/// The status line and headers of an HTTP answer.
fn http_head(wire: &[u8]) -> String {
    let text = String::from_utf8(wire.to_vec()).unwrap();
    text.split("\r\n\r\n").next().unwrap().to_string()
}

// ---- Handshake ----

#[test]
fn accept_key_of_the_rfc_example() {
    assert_eq!(&sec_websocket_accept(KEY.as_bytes()), ACCEPT.as_bytes());
}

#[test]
fn upgrade_answer_names_the_accept_key_and_mqtt() {
    let mut ws = server();
    let (result, app, wire) = feed(&mut ws, &request());
    assert_eq!(result, Ok(WsEvent::Upgraded));
    assert!(app.is_empty());
    assert_eq!(
        &wire[..],
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        )
        .as_bytes()
    );
    assert!(ws.handshake_done() && ws.is_open() && !ws.is_closed());
    assert_eq!(ws.subprotocol(), Some(Subprotocol::Mqtt));
    assert_eq!(ws.scratch.capacity(), 0);
}

fn negotiate(offers: &[(&str, &str)]) -> (Result<WsEvent, WsError>, WsServer, String) {
    let mut ws = server();
    let (result, _, wire) = feed(
        &mut ws,
        &request_with("/mqtt", &[("Sec-WebSocket-Protocol", "")], offers),
    );
    (result, ws, http_head(&wire))
}

#[test]
fn subprotocol_mqtt_is_preferred() {
    let (result, ws, head) = negotiate(&[("Sec-WebSocket-Protocol", "mqttv3.1, mqtt")]);
    assert_eq!(result, Ok(WsEvent::Upgraded));
    assert_eq!(ws.subprotocol(), Some(Subprotocol::Mqtt));
    assert!(head.ends_with("\r\nSec-WebSocket-Protocol: mqtt"));
}

#[test]
fn subprotocol_mqttv31_when_it_is_the_only_one_of_ours() {
    let (result, ws, head) = negotiate(&[("Sec-WebSocket-Protocol", "wamp,mqttv3.1")]);
    assert_eq!(result, Ok(WsEvent::Upgraded));
    assert_eq!(ws.subprotocol(), Some(Subprotocol::MqttV31));
    assert!(head.contains("\r\nSec-WebSocket-Protocol: mqttv3.1"));
}

#[test]
fn subprotocol_offers_over_several_headers() {
    let (result, ws, _) = negotiate(&[
        ("Sec-WebSocket-Protocol", "chat"),
        ("Sec-WebSocket-Protocol", " mqtt "),
    ]);
    assert_eq!(result, Ok(WsEvent::Upgraded));
    assert_eq!(ws.subprotocol(), Some(Subprotocol::Mqtt));
}

#[test]
fn no_subprotocol_offered_is_accepted_without_one() {
    for offers in [&[][..], &[("Sec-WebSocket-Protocol", "")][..]] {
        let (result, ws, head) = negotiate(offers);
        assert_eq!(result, Ok(WsEvent::Upgraded));
        assert_eq!(ws.subprotocol(), None);
        assert!(!head.contains("Sec-WebSocket-Protocol"));
    }
}

#[test]
fn only_foreign_subprotocols_are_refused() {
    for offer in ["chat, wamp", "MQTT", "mqttv5"] {
        let (result, ws, head) = negotiate(&[("Sec-WebSocket-Protocol", offer)]);
        assert_eq!(result, Err(WsError::Handshake(HandshakeError::Subprotocol)));
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(ws.is_closed() && !ws.handshake_done());
    }
}

#[test]
fn request_split_into_single_bytes() {
    let mut ws = server();
    let request = request();
    let mut wire = BytesMut::new();
    let mut app = BytesMut::new();
    for (i, byte) in request.iter().enumerate() {
        let event = ws.on_bytes(&[*byte], &mut app, &mut wire).unwrap();
        if i + 1 < request.len() {
            assert_eq!(event, WsEvent::Progress);
            assert!(wire.is_empty());
        } else {
            assert_eq!(event, WsEvent::Upgraded);
        }
    }
    assert!(wire.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
    // The handshake buffer is freed at the upgrade.
    assert_eq!(ws.scratch.capacity(), 0);
}

#[test]
fn connect_pipelined_behind_the_request() {
    let mut input = request();
    input.extend_from_slice(&binary(CONNECT));
    // In one read.
    let mut ws = server();
    let (result, app, wire) = feed(&mut ws, &input);
    assert_eq!(result, Ok(WsEvent::Upgraded));
    assert_eq!(&app[..], CONNECT);
    assert!(wire.ends_with(b"\r\n\r\n"));
    // The head split, the rest of it and the frame (itself split) in the following reads.
    for cut in [1, 20, request().len() - 1] {
        for cut2 in [request().len(), request().len() + 3, input.len() - 1] {
            let mut ws = server();
            let mut app = BytesMut::new();
            let mut wire = BytesMut::new();
            let mut events = Vec::new();
            for part in [&input[..cut], &input[cut..cut2], &input[cut2..]] {
                events.push(ws.on_bytes(part, &mut app, &mut wire).unwrap());
            }
            assert!(events.contains(&WsEvent::Upgraded), "{cut} {cut2}");
            assert_eq!(&app[..], CONNECT, "{cut} {cut2}");
        }
    }
}

#[test]
fn pipelined_close_closes_at_the_upgrade() {
    let mut input = request();
    input.extend_from_slice(&binary(b"\xe0\x00"));
    input.extend_from_slice(&client_frame(0x88, &1000u16.to_be_bytes(), [1, 2, 3, 4]));
    let mut ws = server();
    let (result, app, wire) = feed(&mut ws, &input);
    assert_eq!(result, Ok(WsEvent::Closed));
    assert_eq!(&app[..], b"\xe0\x00");
    assert!(wire.ends_with(&close_frame(1000)));
    assert!(ws.handshake_done() && ws.is_closed());
}

fn refused(input: &[u8], config: WsConfig) -> (HandshakeError, String, WsServer) {
    let mut ws = server_with(config);
    let (result, app, wire) = feed(&mut ws, input);
    let Err(WsError::Handshake(error)) = result else {
        panic!("not refused: {result:?}");
    };
    assert!(app.is_empty());
    assert!(ws.is_closed() && !ws.handshake_done());
    let text = String::from_utf8(wire.to_vec()).unwrap();
    assert!(
        text.starts_with(&format!("HTTP/1.1 {} ", error.status())),
        "{text}"
    );
    assert!(text.contains("\r\nConnection: close\r\n"));
    // Nothing is read after a refusal.
    let (again, app, wire) = feed(&mut ws, &request());
    assert_eq!(again, Ok(WsEvent::Closed));
    assert!(app.is_empty() && wire.is_empty());
    (error, text, ws)
}

fn refused_default(input: &[u8]) -> (HandshakeError, String) {
    let (error, text, _) = refused(input, WsConfig::default());
    (error, text)
}

#[test]
fn method_other_than_get_is_405() {
    let input = String::from_utf8(request())
        .unwrap()
        .replacen("GET", "POST", 1);
    let (error, text) = refused_default(input.as_bytes());
    assert_eq!(error, HandshakeError::Method);
    assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
    assert!(text.contains("\r\nAllow: GET\r\n"));
}

#[test]
fn other_path_is_404_unless_any_path_is_served() {
    let input = request_with("/ws", &[], &[]);
    let (error, text) = refused_default(&input);
    assert_eq!(error, HandshakeError::NotFound);
    assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
    let mut ws = server_with(WsConfig {
        path: None,
        ..WsConfig::default()
    });
    assert_eq!(feed(&mut ws, &input).0, Ok(WsEvent::Upgraded));
    let mut ws = server_with(WsConfig {
        path: Some("/ws".into()),
        ..WsConfig::default()
    });
    assert_eq!(feed(&mut ws, &input).0, Ok(WsEvent::Upgraded));
}

#[test]
fn query_and_absolute_form_targets_match_the_path() {
    for target in [
        "/mqtt?token=x",
        "http://broker.example/mqtt",
        "ws://broker.example:80/mqtt?x",
    ] {
        let mut ws = server();
        assert_eq!(
            feed(&mut ws, &request_with(target, &[], &[])).0,
            Ok(WsEvent::Upgraded),
            "{target}"
        );
    }
    assert_eq!(handshake::request_path("http://host"), "/");
    assert_eq!(handshake::request_path("/a?b/c"), "/a");
}

#[test]
fn missing_upgrade_is_426() {
    for upgrade in ["", "h2c"] {
        let (error, text) = refused_default(&request_with("/mqtt", &[("Upgrade", upgrade)], &[]));
        assert_eq!(error, HandshakeError::NotWebSocket);
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("\r\nUpgrade: websocket\r\n"));
    }
}

#[test]
fn connection_header_lists_upgrade_in_any_case() {
    for connection in ["keep-alive, Upgrade", "UPGRADE", "upgrade,keep-alive"] {
        let mut ws = server();
        let input = request_with("/mqtt", &[("Connection", connection)], &[]);
        assert_eq!(
            feed(&mut ws, &input).0,
            Ok(WsEvent::Upgraded),
            "{connection}"
        );
    }
    let mut ws = server();
    let input = request_with(
        "/mqtt",
        &[("Upgrade", "WebSocket"), ("Connection", "")],
        &[("Connection", "keep-alive"), ("connection", "upgrade")],
    );
    assert_eq!(feed(&mut ws, &input).0, Ok(WsEvent::Upgraded));
    for connection in ["", "keep-alive", "upgrades"] {
        let (error, text) =
            refused_default(&request_with("/mqtt", &[("Connection", connection)], &[]));
        assert_eq!(error, HandshakeError::ConnectionNotUpgrade);
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    }
}

#[test]
fn version_other_than_13_is_426_naming_13() {
    for version in ["8", "", "13, 8"] {
        let (error, text) = refused_default(&request_with(
            "/mqtt",
            &[("Sec-WebSocket-Version", version)],
            &[],
        ));
        assert_eq!(error, HandshakeError::Version);
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
    }
}

#[test]
fn bad_or_missing_key_is_400() {
    for key in [
        "",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZQ==x",
        "!!!!!!!!!!!!!!!!!!!!!!==",
    ] {
        let (error, text) =
            refused_default(&request_with("/mqtt", &[("Sec-WebSocket-Key", key)], &[]));
        assert_eq!(error, HandshakeError::Key, "{key}");
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    }
    let twice = request_with("/mqtt", &[], &[("Sec-WebSocket-Key", KEY)]);
    assert_eq!(refused_default(&twice).0, HandshakeError::Key);
}

#[test]
fn other_bad_requests_are_400() {
    let http10 = String::from_utf8(request())
        .unwrap()
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    assert_eq!(
        refused_default(http10.as_bytes()).0,
        HandshakeError::HttpVersion
    );
    let no_host = request_with("/mqtt", &[("Host", "")], &[]);
    assert_eq!(refused_default(&no_host).0, HandshakeError::MissingHost);
    let body = request_with("/mqtt", &[], &[("Content-Length", "5")]);
    assert_eq!(refused_default(&body).0, HandshakeError::Body);
    let chunked = request_with("/mqtt", &[], &[("Transfer-Encoding", "chunked")]);
    assert_eq!(refused_default(&chunked).0, HandshakeError::Body);
    let empty_body = request_with("/mqtt", &[], &[("Content-Length", "0")]);
    assert_eq!(feed(&mut server(), &empty_body).0, Ok(WsEvent::Upgraded));
    // An MQTT client speaking to the WebSocket port directly.
    let mut connect = CONNECT.to_vec();
    connect.extend_from_slice(b"\r\n\r\n");
    let (error, text) = refused_default(&connect);
    assert!(matches!(error, HandshakeError::Malformed(_)), "{error:?}");
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
}

#[test]
fn oversized_request_is_431() {
    let big = "x".repeat(DEFAULT_MAX_REQUEST_SIZE);
    let input = request_with("/mqtt", &[], &[("Cookie", &big)]);
    let (error, text) = refused_default(&input);
    assert_eq!(error, HandshakeError::TooLarge);
    assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
    // The same, arriving in small reads: refused once the bound is reached, the buffer freed.
    let mut ws = server();
    let mut app = BytesMut::new();
    let mut wire = BytesMut::new();
    let mut refused_at = None;
    for (i, chunk) in input.chunks(100).enumerate() {
        match ws.on_bytes(chunk, &mut app, &mut wire) {
            Ok(WsEvent::Progress) => assert!(ws.scratch.len() < DEFAULT_MAX_REQUEST_SIZE),
            Err(WsError::Handshake(HandshakeError::TooLarge)) => {
                refused_at = Some(i);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(refused_at, Some(DEFAULT_MAX_REQUEST_SIZE / 100));
    assert_eq!(ws.scratch.capacity(), 0);
    // Too many headers.
    let many: Vec<(String, String)> = (0..40).map(|i| (format!("X-{i}"), "1".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(
        refused_default(&request_with("/mqtt", &[], &many)).0,
        HandshakeError::TooLarge
    );
    // A request exactly at the bound is served.
    let small = WsConfig {
        max_request_size: request().len(),
        ..WsConfig::default()
    };
    let mut ws = server_with(small.clone());
    assert_eq!(feed(&mut ws, &request()).0, Ok(WsEvent::Upgraded));
    let (error, _, _) = refused(&request_with("/mqtt", &[], &[("X", "1")]), small);
    assert_eq!(error, HandshakeError::TooLarge);
}

// ---- Frames ----

/// Feeds `input` to an open server and expects it to close with `code` and `error`.
fn violation(input: &[u8], error: FrameError, code: u16) {
    violation_with(open(), input, error, code);
}

fn violation_with(mut ws: WsServer, input: &[u8], error: FrameError, code: u16) {
    let (result, _, wire) = feed(&mut ws, input);
    assert_eq!(result, Err(WsError::Frame(error)));
    assert_eq!(result.unwrap_err().close_code(), Some(CloseCode(code)));
    assert!(wire.ends_with(&close_frame(code)), "{wire:?}");
    assert!(ws.is_closed());
    // Nothing more is read or written.
    let (again, app, wire) = feed(&mut ws, &binary(b"x"));
    assert_eq!(again, Ok(WsEvent::Closed));
    assert!(app.is_empty() && wire.is_empty());
}

#[test]
fn binary_frames_carry_mqtt() {
    let mut ws = open();
    let (result, app, wire) = feed(&mut ws, &binary(CONNECT));
    assert_eq!(result, Ok(WsEvent::Progress));
    assert_eq!(&app[..], CONNECT);
    assert!(wire.is_empty());
}

#[test]
fn several_packets_per_frame_and_packets_across_frames() {
    let mut stream = CONNECT.to_vec();
    stream.extend_from_slice(&[0xc0, 0x00, 0xc0, 0x00, 0xe0, 0x00]);
    let mut ws = open();
    let mut input = binary(&stream[..4]);
    input.extend_from_slice(&binary(&stream[4..]));
    let (result, app, _) = feed(&mut ws, &input);
    assert_eq!(result, Ok(WsEvent::Progress));
    assert_eq!(&app[..], &stream[..]);
}

#[test]
fn empty_frames_are_fine() {
    let mut ws = open();
    let mut input = binary(b"");
    input.extend_from_slice(&client_frame(OP_BINARY, b"", [9, 9, 9, 9]));
    input.extend_from_slice(&client_frame(0x80 | OP_CONTINUATION, b"", [9, 9, 9, 9]));
    input.extend_from_slice(&binary(b"ok"));
    let (result, app, wire) = feed(&mut ws, &input);
    assert_eq!(result, Ok(WsEvent::Progress));
    assert_eq!(&app[..], b"ok");
    assert!(wire.is_empty());
}

#[test]
fn unmasked_frame_is_1002() {
    violation(&[0x82, 0x01, 0x10], FrameError::Unmasked, 1002);
    // Found with the first two bytes, before the rest arrives.
    violation(&[0x82, 0x7f], FrameError::Unmasked, 1002);
}

#[test]
fn text_frame_is_1003() {
    violation(
        &client_frame(0x80 | OP_TEXT, b"hi", [1, 2, 3, 4]),
        FrameError::Text,
        1003,
    );
}

#[test]
fn reserved_bits_are_1002() {
    for rsv in [0x40, 0x20, 0x10] {
        violation(
            &client_frame(0x80 | rsv | OP_BINARY, b"x", [1, 2, 3, 4]),
            FrameError::ReservedBits,
            1002,
        );
    }
}

#[test]
fn reserved_opcodes_are_1002() {
    for opcode in [0x3, 0x7, 0xb, 0xf] {
        violation(
            &client_frame(0x80 | opcode, b"", [1, 2, 3, 4]),
            FrameError::ReservedOpcode(opcode),
            1002,
        );
    }
}

#[test]
fn long_or_fragmented_control_frames_are_1002() {
    let long = [7u8; 126];
    for opcode in [OP_PING, OP_PONG, OP_CLOSE] {
        violation(
            &client_frame(0x80 | opcode, &long, [1, 2, 3, 4]),
            FrameError::ControlTooLong,
            1002,
        );
        violation(
            &client_frame(opcode, b"", [1, 2, 3, 4]),
            FrameError::FragmentedControl,
            1002,
        );
    }
}

#[test]
fn continuation_rules_are_1002() {
    violation(
        &client_frame(0x80 | OP_CONTINUATION, b"x", [1, 2, 3, 4]),
        FrameError::UnexpectedContinuation,
        1002,
    );
    let mut input = client_frame(OP_BINARY, b"a", [1, 2, 3, 4]);
    input.extend_from_slice(&binary(b"b"));
    violation(&input, FrameError::ExpectedContinuation, 1002);
}

#[test]
fn length_with_top_bit_is_1002() {
    let mut input = vec![0x82, 0x80 | 127];
    input.extend_from_slice(&(1u64 << 63).to_be_bytes());
    input.extend_from_slice(&[1, 2, 3, 4]);
    violation(&input, FrameError::LengthOverflow, 1002);
}

#[test]
fn close_payload_rules() {
    // A 1-byte payload.
    violation(
        &client_frame(0x88, &[0x03], [1, 2, 3, 4]),
        FrameError::CloseTooShort,
        1002,
    );
    // Codes that may not be sent.
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        violation(
            &client_frame(0x88, &code.to_be_bytes(), [1, 2, 3, 4]),
            FrameError::InvalidCloseCode(code),
            1002,
        );
    }
    // A reason that is not UTF-8.
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye \xff\xfe");
    violation(
        &client_frame(0x88, &payload, [1, 2, 3, 4]),
        FrameError::InvalidCloseReason,
        1007,
    );
}

#[test]
fn close_is_echoed_then_closed() {
    for code in [1000u16, 1001, 1003, 1011, 1014, 3000, 4999] {
        let mut ws = open();
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice("au revoir ✓".as_bytes());
        let mut input = binary(&[0xe0, 0x00]);
        input.extend_from_slice(&client_frame(0x88, &payload, [5, 6, 7, 8]));
        // Anything after the close is ignored.
        input.extend_from_slice(&binary(b"late"));
        let (result, app, wire) = feed(&mut ws, &input);
        assert_eq!(result, Ok(WsEvent::Closed));
        assert_eq!(
            &app[..],
            &[0xe0, 0x00],
            "the DISCONNECT before the close is delivered"
        );
        assert_eq!(&wire[..], &close_frame(code)[..]);
        assert!(ws.is_closed() && ws.handshake_done());
        assert_eq!(ws.wrap(b"x", &mut BytesMut::new()), Err(WsError::NotOpen));
    }
    // Without a code: answered without one.
    let mut ws = open();
    let (result, _, wire) = feed(&mut ws, &client_frame(0x88, b"", [5, 6, 7, 8]));
    assert_eq!(result, Ok(WsEvent::Closed));
    assert_eq!(&wire[..], &[0x88, 0x00]);
}

#[test]
fn ping_is_answered_with_its_payload_and_pong_ignored() {
    let mut ws = open();
    let payload: Vec<u8> = (0..125).collect();
    for len in [0, 1, 4, 125] {
        let (result, app, wire) = feed(
            &mut ws,
            &client_frame(0x80 | OP_PING, &payload[..len], [9, 8, 7, 6]),
        );
        assert_eq!(result, Ok(WsEvent::Progress));
        assert!(app.is_empty());
        assert_eq!(
            server_frames(&wire),
            vec![(0x80 | OP_PONG, payload[..len].to_vec())]
        );
    }
    let (result, app, wire) = feed(&mut ws, &client_frame(0x80 | OP_PONG, b"hey", [9, 8, 7, 6]));
    assert_eq!(result, Ok(WsEvent::Progress));
    assert!(app.is_empty() && wire.is_empty());
}

#[test]
fn ping_split_across_reads() {
    let payload: Vec<u8> = (0..100).collect();
    let input = client_frame(0x80 | OP_PING, &payload, [0xde, 0xad, 0xbe, 0xef]);
    for cut in 1..input.len() {
        for cut2 in [cut, (cut + 7).min(input.len())] {
            let mut ws = open();
            let mut app = BytesMut::new();
            let mut wire = BytesMut::new();
            for part in [&input[..cut], &input[cut..cut2], &input[cut2..]] {
                assert_eq!(
                    ws.on_bytes(part, &mut app, &mut wire),
                    Ok(WsEvent::Progress)
                );
            }
            assert_eq!(
                server_frames(&wire),
                vec![(0x80 | OP_PONG, payload.clone())]
            );
            assert_eq!(ws.scratch.capacity(), 0, "the control buffer is freed");
        }
    }
}

#[test]
fn fragmented_message_with_interleaved_ping() {
    let mut input = client_frame(OP_BINARY, b"ab", [1, 2, 3, 4]);
    input.extend_from_slice(&client_frame(0x80 | OP_PING, b"p", [5, 6, 7, 8]));
    input.extend_from_slice(&client_frame(OP_CONTINUATION, b"cd", [9, 10, 11, 12]));
    input.extend_from_slice(&client_frame(0x80 | OP_PONG, b"q", [5, 6, 7, 8]));
    input.extend_from_slice(&client_frame(
        0x80 | OP_CONTINUATION,
        b"ef",
        [13, 14, 15, 16],
    ));
    input.extend_from_slice(&binary(b"gh"));
    for split in 1..input.len() {
        let mut ws = open();
        let mut app = BytesMut::new();
        let mut wire = BytesMut::new();
        for part in input.chunks(split) {
            assert_eq!(
                ws.on_bytes(part, &mut app, &mut wire),
                Ok(WsEvent::Progress)
            );
        }
        assert_eq!(&app[..], b"abcdefgh");
        assert_eq!(server_frames(&wire), vec![(0x80 | OP_PONG, b"p".to_vec())]);
    }
}

#[test]
fn sixteen_and_sixty_four_bit_lengths() {
    let payload: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
    for (len, form) in [
        (300, None),
        (70_000, None),
        (5, Some(127)),
        (5, Some(126)),
        (300, Some(127)),
    ] {
        let input = client_frame_form(0x80 | OP_BINARY, &payload[..len], [3, 1, 4, 1], form);
        let mut ws = open();
        let (result, app, _) = feed(&mut ws, &input);
        assert_eq!(result, Ok(WsEvent::Progress));
        assert_eq!(&app[..], &payload[..len], "{len} {form:?}");
    }
}

#[test]
fn masking_any_key_any_split() {
    let payload: Vec<u8> = (0..41).collect();
    for mask in [[0, 0, 0, 0], [0xff, 0, 0xff, 0], [1, 2, 3, 4]] {
        let input = binary_masked(&payload, mask);
        for cut in 0..=input.len() {
            let mut ws = open();
            let mut app = BytesMut::new();
            let mut wire = BytesMut::new();
            ws.on_bytes(&input[..cut], &mut app, &mut wire).unwrap();
            ws.on_bytes(&input[cut..], &mut app, &mut wire).unwrap();
            assert_eq!(&app[..], &payload[..]);
        }
    }
}

fn binary_masked(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    client_frame(0x80 | OP_BINARY, payload, mask)
}

#[test]
fn message_size_limit_is_1009() {
    let config = || WsConfig {
        max_message_size: 100,
        ..WsConfig::default()
    };
    let opened = || {
        let mut ws = server_with(config());
        assert_eq!(feed(&mut ws, &request()).0, Ok(WsEvent::Upgraded));
        ws
    };
    // Exactly the limit is fine, and the count starts again with each message.
    let mut ws = opened();
    let mut input = binary(&[0u8; 100]);
    input.extend_from_slice(&client_frame(OP_BINARY, &[0u8; 60], [1, 1, 1, 1]));
    input.extend_from_slice(&client_frame(0x80, &[0u8; 40], [1, 1, 1, 1]));
    input.extend_from_slice(&binary(&[0u8; 100]));
    let (result, app, _) = feed(&mut ws, &input);
    assert_eq!(result, Ok(WsEvent::Progress));
    assert_eq!(app.len(), 300);
    // One frame over: refused from its header, before the payload arrives.
    let limit = FrameError::MessageTooBig { limit: 100 };
    violation_with(opened(), &binary(&[0u8; 101])[..8], limit, 1009);
    // Fragments adding up to more.
    let mut input = client_frame(OP_BINARY, &[0u8; 60], [1, 1, 1, 1]);
    input.extend_from_slice(&client_frame(0x80, &[0u8; 41], [1, 1, 1, 1]));
    violation_with(opened(), &input, limit, 1009);
    // A 64-bit length far over any limit.
    let mut input = vec![0x82, 0x80 | 127];
    input.extend_from_slice(&(1u64 << 40).to_be_bytes());
    input.extend_from_slice(&[1, 2, 3, 4]);
    violation(
        &input,
        FrameError::MessageTooBig {
            limit: DEFAULT_MAX_MESSAGE_SIZE,
        },
        1009,
    );
}

// ---- Server side ----

#[test]
fn wrap_frames_unmasked_binary() {
    let ws = server();
    assert_eq!(ws.wrap(b"x", &mut BytesMut::new()), Err(WsError::NotOpen));
    let ws = open();
    for len in [1usize, 125, 126, 65_535, 65_536, 70_000] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut wire = BytesMut::from(&b"before"[..]);
        ws.wrap(&payload, &mut wire).unwrap();
        assert_eq!(&wire[..6], b"before");
        let header_len = match len {
            0..=125 => 2,
            126..=65_535 => 4,
            _ => 10,
        };
        assert_eq!(wire.len(), 6 + header_len + len);
        assert_eq!(server_frames(&wire[6..]), vec![(0x82, payload)]);
    }
    let mut wire = BytesMut::new();
    ws.wrap(b"", &mut wire).unwrap();
    assert!(wire.is_empty());
}

#[test]
fn frame_header_for_vectored_writes() {
    assert_eq!(FrameHeader::binary(5).as_bytes(), &[0x82, 5]);
    assert_eq!(FrameHeader::binary(300).as_bytes(), &[0x82, 126, 1, 44]);
    assert_eq!(
        FrameHeader::binary(1 << 16).as_bytes(),
        &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]
    );
}

#[test]
fn batch_framed_in_place_without_moving_the_payload() {
    let ws = open();
    for len in [1usize, 125, 126, 65_536] {
        let mut out = BytesMut::with_capacity(len + 64);
        let slot = WsServer::reserve_header(&mut out);
        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        // Two MQTT packets' worth of bytes, appended one after the other.
        out.extend_from_slice(&payload[..len / 2]);
        out.extend_from_slice(&payload[len / 2..]);
        let payload_at = out[MAX_HEADER_LEN..].as_ptr();
        ws.finish_frame(&mut out, slot).unwrap();
        assert_eq!(server_frames(&out), vec![(0x82, payload)]);
        let header_len = out.len() - len;
        assert_eq!(
            out[header_len..].as_ptr(),
            payload_at,
            "the payload was not copied"
        );
    }
}

#[test]
fn batch_behind_other_frames() {
    let mut ws = open();
    let mut out = BytesMut::new();
    // A pong already waiting, then a batch.
    ws.on_bytes(
        &client_frame(0x80 | OP_PING, b"hi", [1, 2, 3, 4]),
        &mut BytesMut::new(),
        &mut out,
    )
    .unwrap();
    let slot = WsServer::reserve_header(&mut out);
    out.extend_from_slice(&[0x20, 0x02, 0x00, 0x00]);
    ws.finish_frame(&mut out, slot).unwrap();
    assert_eq!(
        server_frames(&out),
        vec![(0x8a, b"hi".to_vec()), (0x82, vec![0x20, 0x02, 0x00, 0x00])]
    );
    // An empty batch leaves nothing.
    let before = out.clone();
    let slot = WsServer::reserve_header(&mut out);
    ws.finish_frame(&mut out, slot).unwrap();
    assert_eq!(out, before);
    // A lost slot is an error, not a panic.
    let slot = WsServer::reserve_header(&mut out);
    out.truncate(before.len() + 3);
    assert_eq!(ws.finish_frame(&mut out, slot), Err(WsError::LostSlot));
    // Not open: the batch is dropped.
    let mut out = BytesMut::new();
    let slot = WsServer::reserve_header(&mut out);
    out.extend_from_slice(b"mqtt");
    ws.close(CloseCode::NORMAL, &mut BytesMut::new());
    assert_eq!(ws.finish_frame(&mut out, slot), Err(WsError::NotOpen));
    assert!(out.is_empty());
}

#[test]
fn server_close_waits_for_the_client_close() {
    let mut ws = open();
    let mut wire = BytesMut::new();
    ws.close(CloseCode::GOING_AWAY, &mut wire);
    assert_eq!(&wire[..], &close_frame(1001)[..]);
    assert!(ws.is_closing() && !ws.is_open() && !ws.is_closed());
    // Closing twice sends nothing more.
    let mut again = BytesMut::new();
    ws.close(CloseCode::NORMAL, &mut again);
    assert!(again.is_empty());
    assert_eq!(ws.wrap(b"x", &mut again), Err(WsError::NotOpen));
    // Data and pings from the client are dropped, its close ends it without an echo.
    let mut input = binary(b"data");
    input.extend_from_slice(&client_frame(0x80 | OP_PING, b"p", [1, 2, 3, 4]));
    input.extend_from_slice(&client_frame(0x88, &1001u16.to_be_bytes(), [1, 2, 3, 4]));
    let (result, app, wire) = feed(&mut ws, &input);
    assert_eq!(result, Ok(WsEvent::Closed));
    assert!(app.is_empty() && wire.is_empty());
    assert!(ws.is_closed());
    // A violation while closing closes without a second close frame.
    let mut ws = open();
    ws.close(CloseCode::NORMAL, &mut BytesMut::new());
    let (result, _, wire) = feed(&mut ws, &[0x82, 0x00]);
    assert_eq!(result, Err(WsError::Frame(FrameError::Unmasked)));
    assert!(wire.is_empty());
    // Before the upgrade: closed at once, nothing sent.
    let mut ws = server();
    assert_eq!(feed(&mut ws, &request()[..10]).0, Ok(WsEvent::Progress));
    let mut wire = BytesMut::new();
    ws.close(CloseCode::NORMAL, &mut wire);
    assert!(wire.is_empty() && ws.is_closed());
    assert_eq!(ws.scratch.capacity(), 0);
}

#[test]
fn state_size() {
    let size = std::mem::size_of::<WsServer>();
    println!("size_of::<WsServer>() = {size}");
    assert!(size <= 96, "{size}");
}

// ---- Properties ----

/// One step of a model client: a data fragment (ending its message or not), or a control frame.
#[derive(Debug, Clone)]
enum Step {
    Data {
        len: usize,
        fin: bool,
        mask: [u8; 4],
        long: bool,
    },
    Ping(Vec<u8>, [u8; 4]),
    Pong(Vec<u8>, [u8; 4]),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0usize..300, any::<bool>(), any::<[u8; 4]>(), prop::bool::weighted(0.1))
            .prop_map(|(len, fin, mask, long)| Step::Data { len, fin, mask, long }),
        1 => (prop::collection::vec(any::<u8>(), 0..=125), any::<[u8; 4]>())
            .prop_map(|(payload, mask)| Step::Ping(payload, mask)),
        1 => (prop::collection::vec(any::<u8>(), 0..=125), any::<[u8; 4]>())
            .prop_map(|(payload, mask)| Step::Pong(payload, mask)),
    ]
}

/// The model client: frames a byte stream into binary messages and their fragments.
struct ModelClient<'a> {
    stream: &'a [u8],
    at: usize,
    in_message: bool,
    wire: Vec<u8>,
    pings: Vec<Vec<u8>>,
}

impl ModelClient<'_> {
    fn data(&mut self, len: usize, fin: bool, mask: [u8; 4], long: bool) {
        let len = len.min(self.stream.len() - self.at);
        let opcode = if self.in_message {
            OP_CONTINUATION
        } else {
            OP_BINARY
        };
        let first = opcode | if fin { 0x80 } else { 0 };
        let payload = &self.stream[self.at..self.at + len];
        let frame = client_frame_form(first, payload, mask, long.then_some(127));
        self.wire.extend_from_slice(&frame);
        self.at += len;
        self.in_message = !fin;
    }

    fn control(&mut self, opcode: u8, payload: &[u8], mask: [u8; 4]) {
        if opcode == OP_PING {
            self.pings.push(payload.to_vec());
        }
        let frame = client_frame(0x80 | opcode, payload, mask);
        self.wire.extend_from_slice(&frame);
    }
}

/// Frames `stream` as the model client's steps say (cycling through them, control frames
/// between fragments too, the rest in a final frame): the wire bytes and the pings' payloads.
fn model_client(stream: &[u8], steps: &[Step]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut client = ModelClient {
        stream,
        at: 0,
        in_message: false,
        wire: Vec::new(),
        pings: Vec::new(),
    };
    for step in steps.iter().cycle().take(steps.len() * 64) {
        if client.at >= stream.len() {
            break;
        }
        match step {
            Step::Data {
                len,
                fin,
                mask,
                long,
            } => client.data(*len, *fin, *mask, *long),
            Step::Ping(payload, mask) => client.control(OP_PING, payload, *mask),
            Step::Pong(payload, mask) => client.control(OP_PONG, payload, *mask),
        }
    }
    if client.at < stream.len() || client.in_message {
        client.data(usize::MAX, true, [0x11, 0x22, 0x33, 0x44], false);
    }
    (client.wire, client.pings)
}

/// Feeds `input` in reads of the given sizes (cycled); stops at the first error or close.
fn feed_split(
    ws: &mut WsServer,
    input: &[u8],
    sizes: &[usize],
) -> (Vec<Result<WsEvent, WsError>>, BytesMut, BytesMut) {
    let mut app = BytesMut::new();
    let mut wire = BytesMut::new();
    let mut results = Vec::new();
    let mut at = 0;
    let mut sizes = sizes.iter().cycle();
    while at < input.len() {
        let size = sizes.next().copied().unwrap_or(input.len()).max(1);
        let end = input.len().min(at + size);
        let result = ws.on_bytes(&input[at..end], &mut app, &mut wire);
        let stop = matches!(result, Err(_) | Ok(WsEvent::Closed));
        results.push(result);
        at = end;
        if stop {
            break;
        }
    }
    (results, app, wire)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn framed_stream_comes_out_identical(
        stream in prop::collection::vec(any::<u8>(), 0..3000),
        steps in prop::collection::vec(step(), 1..24),
        sizes in prop::collection::vec(1usize..700, 1..16),
    ) {
        let (frames, pings) = model_client(&stream, &steps);
        let mut input = request();
        input.extend_from_slice(&frames);
        let mut ws = server();
        let (results, app, wire) = feed_split(&mut ws, &input, &sizes);
        prop_assert!(results.iter().all(|r| matches!(r, Ok(WsEvent::Progress | WsEvent::Upgraded))), "{results:?}");
        prop_assert_eq!(results.iter().filter(|r| **r == Ok(WsEvent::Upgraded)).count(), 1);
        prop_assert_eq!(&app[..], &stream[..]);
        let head_end = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let pongs: Vec<Vec<u8>> = server_frames(&wire[head_end..])
            .into_iter()
            .map(|(first, payload)| {
                assert_eq!(first, 0x80 | OP_PONG);
                payload
            })
            .collect();
        prop_assert_eq!(pongs, pings);
        prop_assert!(ws.is_open());
        prop_assert_eq!(ws.scratch.capacity(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..2000),
        upgraded in any::<bool>(),
        sizes in prop::collection::vec(1usize..300, 1..8),
    ) {
        let mut ws = server_with(WsConfig { max_message_size: 1000, ..WsConfig::default() });
        let mut input = if upgraded { request() } else { Vec::new() };
        input.extend_from_slice(&bytes);
        let (results, _, _) = feed_split(&mut ws, &input, &sizes);
        if matches!(results.last(), Some(Err(_) | Ok(WsEvent::Closed))) {
            prop_assert!(ws.is_closed());
            let (again, app, wire) = feed(&mut ws, &bytes);
            prop_assert_eq!(again, Ok(WsEvent::Closed));
            prop_assert!(app.is_empty() && wire.is_empty());
        }
    }

    #[test]
    fn mutated_streams_never_panic(
        stream in prop::collection::vec(any::<u8>(), 0..600),
        steps in prop::collection::vec(step(), 1..8),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        sizes in prop::collection::vec(1usize..100, 1..8),
    ) {
        let (frames, _) = model_client(&stream, &steps);
        let mut input = request();
        input.extend_from_slice(&frames);
        for (at, value) in flips {
            let at = at.index(input.len());
            input[at] ^= value;
        }
        let mut ws = server();
        let (results, app, _) = feed_split(&mut ws, &input, &sizes);
        if let Some(Err(error)) = results.last() {
            prop_assert!(ws.is_closed());
            prop_assert!(error.close_code().is_some() || error.http_status().is_some());
        }
        prop_assert!(app.len() <= input.len());
    }
}
