//! Feeds arbitrary bytes to the WebSocket server transport, in reads whose size the first byte
//! chooses, both as the upgrade request and behind a valid one: nothing may panic, a transport
//! that reports an error or a close stays closed, and what comes out as MQTT bytes is never
//! more than what went in. The MQTT bytes are echoed through the write side (framed in place).
#![no_main]

use std::sync::Arc;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardmq::net::websocket::{WsConfig, WsEvent, WsServer};

const REQUEST: &[u8] = b"GET /mqtt HTTP/1.1\r\nHost: broker\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

fuzz_target!(|data: &[u8]| {
    let Some((&read_size, data)) = data.split_first() else {
        return;
    };
    let config = Arc::new(WsConfig {
        max_message_size: 1 << 16,
        ..WsConfig::default()
    });
    for upgraded in [false, true] {
        let mut ws = WsServer::new(config.clone());
        let mut app = BytesMut::new();
        let mut wire = BytesMut::new();
        if upgraded {
            let event = ws.on_bytes(REQUEST, &mut app, &mut wire);
            assert_eq!(event, Ok(WsEvent::Upgraded));
        }
        let mut delivered = 0;
        for read in data.chunks(usize::from(read_size).max(1)) {
            let result = ws.on_bytes(read, &mut app, &mut wire);
            delivered += app.len();
            if matches!(result, Err(_) | Ok(WsEvent::Closed)) {
                assert!(ws.is_closed());
                let mut after = BytesMut::new();
                assert_eq!(ws.on_bytes(read, &mut app, &mut after), Ok(WsEvent::Closed));
                assert!(after.is_empty());
                break;
            }
            if ws.is_open() {
                let slot = WsServer::reserve_header(&mut wire);
                wire.extend_from_slice(&app);
                ws.finish_frame(&mut wire, slot).expect("framed while open");
            }
            app.clear();
        }
        assert!(delivered <= data.len());
    }
});
