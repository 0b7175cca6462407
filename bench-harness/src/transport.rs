//! What runs between MQTT and the TCP socket: nothing (`tcp`), TLS (`--tls`), WebSocket
//! (`--ws`) or WebSocket over TLS (`--tls --ws`).
//!
//! The engine keeps its plaintext MQTT buffers (`rbuf`, `wbuf`) and its one read per readable
//! event; a connection with a transport has a [`Layer`] that turns bytes read from the socket
//! into MQTT bytes and MQTT bytes into bytes for the socket. TLS is rustls' buffer API
//! ([`ClientConnection`]: `read_tls` / `process_new_packets` / `write_tls`) with the ring
//! provider; the WebSocket client is [`crate::ws`].

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::Serialize;

use crate::ws::{self, Control, Decoder, Rng};

/// The transport under MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSocket over TCP.
    Ws,
    /// WebSocket over TLS.
    Wss,
}

impl Transport {
    /// From the flags.
    pub fn from_flags(tls: bool, ws: bool) -> Transport {
        match (tls, ws) {
            (false, false) => Transport::Tcp,
            (true, false) => Transport::Tls,
            (false, true) => Transport::Ws,
            (true, true) => Transport::Wss,
        }
    }

    /// The name in results: tcp, tls, ws, wss.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// Whether TLS is part of it.
    pub fn tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    /// Whether WebSocket is part of it.
    pub fn ws(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }

    /// The usual port: 1883, 8883, 8080 (Mosquitto's examples) or 8443.
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tcp => 1883,
            Transport::Tls => 8883,
            Transport::Ws => 8080,
            Transport::Wss => 8443,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The TLS flags, as recorded in the results.
#[derive(Debug, Clone, Serialize)]
pub struct TlsOptions {
    /// CA file trusted for the broker's certificate.
    pub cafile: Option<PathBuf>,
    /// No certificate verification (signatures still checked).
    pub insecure: bool,
    /// Client certificate chain.
    pub cert: Option<PathBuf>,
    /// Client key.
    pub key: Option<PathBuf>,
    /// SNI and the name checked in the broker's certificate.
    pub server_name: String,
    /// Session resumption across connections (off: every connection is a full handshake).
    pub resume: bool,
    /// "1.2", "1.3" or None for both.
    pub version: Option<String>,
}

/// What every TLS connection of a run shares.
#[derive(Debug, Clone)]
pub struct TlsClient {
    /// The rustls configuration.
    pub config: Arc<ClientConfig>,
    /// The server name.
    pub server_name: ServerName<'static>,
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no PEM certificate in {}", path.display()));
    }
    Ok(certs)
}

impl TlsClient {
    /// Builds the client configuration from the flags (reads the PEM files).
    pub fn new(opts: &TlsOptions) -> Result<TlsClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match opts.version.as_deref() {
            Some("1.2") => &[&rustls::version::TLS12],
            Some("1.3") => &[&rustls::version::TLS13],
            _ => rustls::DEFAULT_VERSIONS,
        };
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = if opts.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        } else {
            let Some(cafile) = &opts.cafile else {
                return Err(
                    "--tls needs --cafile FILE (the CA of the broker's certificate) or --insecure"
                        .into(),
                );
            };
            let mut roots = RootCertStore::empty();
            for cert in read_certs(cafile)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate in {}: {e}", cafile.display()))?;
            }
            builder.with_root_certificates(roots)
        };
        let mut config = match (&opts.cert, &opts.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    format!("cannot read a private key from {}: {e}", key.display())
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("client certificate: {e}"))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("--cert and --key go together".into()),
        };
        if !opts.resume {
            config.resumption = Resumption::disabled();
        }
        let server_name = ServerName::try_from(opts.server_name.clone())
            .map_err(|e| format!("--server-name {:?}: {e}", opts.server_name))?;
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// `--insecure`: accepts any certificate, still checks the handshake signatures with it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The WebSocket side of a connection.
struct WsState {
    /// Until the 101 arrives: the expected accept key and the response bytes so far.
    handshake: Option<(String, Vec<u8>)>,
    decoder: Decoder,
    events: Vec<Control>,
    rng: Rng,
}

/// Outcome of [`Layer::flush`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Nothing more can be written now (all written, or waiting for the peer).
    Idle,
    /// The socket would block: wait for writability.
    Blocked,
}

/// Queued WebSocket output above which no more MQTT bytes are framed (back-pressure: the rest
/// stays in the engine's write buffer, which its publishers watch).
const WS_OUT_HIGH: usize = 256 * 1024;

/// One connection's transport state.
pub struct Layer {
    tls: Option<ClientConnection>,
    ws: Option<WsState>,
    /// WebSocket output (upgrade request, frames): to the TLS writer (wss) or the socket (ws).
    out: BytesMut,
    /// TLS plaintext on its way to the WebSocket decoder (wss).
    plain: Vec<u8>,
}

impl Layer {
    /// A layer for a new connection; `host` goes into the WebSocket request's Host header.
    pub fn new(
        transport: Transport,
        tls: Option<&TlsClient>,
        host: &str,
        ws_path: &str,
        seed: u64,
    ) -> Result<Layer, String> {
        let tls = match (transport.tls(), tls) {
            (true, Some(t)) => Some(
                ClientConnection::new(t.config.clone(), t.server_name.clone())
                    .map_err(|e| format!("TLS: {e}"))?,
            ),
            (true, None) => return Err("TLS transport without a TLS configuration".into()),
            (false, _) => None,
        };
        let mut out = BytesMut::new();
        let ws = transport.ws().then(|| {
            let mut rng = Rng::new(seed);
            let key = ws::new_key(&mut rng);
            out.extend_from_slice(ws::request(host, ws_path, &key).as_bytes());
            WsState {
                handshake: Some((ws::accept_key(&key), Vec::new())),
                decoder: Decoder::default(),
                events: Vec::new(),
                rng,
            }
        });
        Ok(Layer {
            tls,
            ws,
            out,
            plain: Vec::new(),
        })
    }

    /// Moves MQTT bytes from `wbuf` down the stack as far as the layers take them.
    fn encode(&mut self, wbuf: &mut BytesMut) -> io::Result<()> {
        if let Some(ws) = &mut self.ws {
            if ws.handshake.is_none() {
                while !wbuf.is_empty() && self.out.len() < WS_OUT_HIGH {
                    let n = wbuf.len().min(ws::MAX_FRAME);
                    ws::encode_frame(ws::OP_BINARY, &wbuf[..n], ws.rng.mask(), &mut self.out);
                    wbuf.advance(n);
                }
            }
            if let Some(tls) = &mut self.tls {
                if !self.out.is_empty() {
                    let n = tls.writer().write(&self.out)?;
                    self.out.advance(n);
                }
            }
        } else if let Some(tls) = &mut self.tls {
            if !wbuf.is_empty() {
                let n = tls.writer().write(wbuf)?;
                wbuf.advance(n);
            }
        }
        Ok(())
    }

    /// Encodes what `wbuf` holds and writes to `sock` until nothing is left or it would block.
    pub fn flush<S: Write>(
        &mut self,
        wbuf: &mut BytesMut,
        sock: &mut S,
    ) -> Result<Flushed, String> {
        loop {
            self.encode(wbuf).map_err(|e| format!("TLS write: {e}"))?;
            let written = match &mut self.tls {
                Some(tls) if tls.wants_write() => tls.write_tls(sock),
                Some(_) => return Ok(Flushed::Idle),
                None if self.out.is_empty() => return Ok(Flushed::Idle),
                None => sock.write(&self.out).inspect(|&n| self.out.advance(n)),
            };
            match written {
                Ok(0) => return Err("write returned 0".into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
    }

    /// Takes `data` read from the socket; MQTT bytes go to `rbuf`. Call [`Layer::flush`]
    /// afterwards: handshakes and pings may have produced output, a completed WebSocket
    /// handshake releases the MQTT bytes held back.
    pub fn read(&mut self, data: &[u8], rbuf: &mut BytesMut) -> Result<(), String> {
        let Some(tls) = &mut self.tls else {
            return ws_read(
                self.ws.as_mut().expect("a layer has TLS or WebSocket"),
                data,
                rbuf,
                &mut self.out,
            );
        };
        let mut input = data;
        while !input.is_empty() {
            tls.read_tls(&mut input)
                .map_err(|e| format!("TLS read: {e}"))?;
            let state = tls.process_new_packets().map_err(|e| format!("TLS: {e}"))?;
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                let mut reader = tls.reader();
                if let Some(ws) = &mut self.ws {
                    self.plain.resize(n, 0);
                    reader
                        .read_exact(&mut self.plain)
                        .map_err(|e| format!("TLS read: {e}"))?;
                    ws_read(ws, &self.plain, rbuf, &mut self.out)?;
                } else {
                    let start = rbuf.len();
                    rbuf.resize(start + n, 0);
                    reader
                        .read_exact(&mut rbuf[start..])
                        .map_err(|e| format!("TLS read: {e}"))?;
                }
            }
            if state.peer_has_closed() {
                return Err("broker closed the TLS session (close_notify)".into());
            }
        }
        Ok(())
    }

    /// Before the socket is shut: a WebSocket close frame (after the MQTT bytes still in
    /// `wbuf`) and TLS close_notify. [`Layer::flush`] sends them.
    pub fn close(&mut self, wbuf: &mut BytesMut) {
        if let Some(ws) = &mut self.ws {
            if ws.handshake.is_none() {
                while !wbuf.is_empty() {
                    let n = wbuf.len().min(ws::MAX_FRAME);
                    ws::encode_frame(ws::OP_BINARY, &wbuf[..n], ws.rng.mask(), &mut self.out);
                    wbuf.advance(n);
                }
                ws::encode_frame(
                    ws::OP_CLOSE,
                    &1000u16.to_be_bytes(),
                    ws.rng.mask(),
                    &mut self.out,
                );
            }
        }
        if let Some(tls) = &mut self.tls {
            // Past the buffer limit the rest is dropped: the connection is going away anyway.
            if self.ws.is_some() {
                if let Ok(n) = tls.writer().write(&self.out) {
                    self.out.advance(n);
                }
            } else if let Ok(n) = tls.writer().write(wbuf) {
                wbuf.advance(n);
            }
            tls.send_close_notify();
        }
    }
}

fn ws_read(
    ws: &mut WsState,
    data: &[u8],
    rbuf: &mut BytesMut,
    out: &mut BytesMut,
) -> Result<(), String> {
    if let Some((accept, head)) = &mut ws.handshake {
        head.extend_from_slice(data);
        let Some(len) = ws::parse_response(head, accept)? else {
            return Ok(());
        };
        let head = std::mem::take(head);
        ws.handshake = None;
        let rest = &head[len..];
        return if rest.is_empty() {
            Ok(())
        } else {
            // Frames right behind the response (rare): decode them from the copy.
            ws_frames(ws, rest, rbuf, out)
        };
    }
    ws_frames(ws, data, rbuf, out)
}

fn ws_frames(
    ws: &mut WsState,
    data: &[u8],
    rbuf: &mut BytesMut,
    out: &mut BytesMut,
) -> Result<(), String> {
    ws.decoder.decode(data, rbuf, &mut ws.events)?;
    for event in ws.events.drain(..) {
        match event {
            Control::Ping(payload) => {
                ws::encode_frame(ws::OP_PONG, &payload, ws.rng.mask(), out);
            }
            Control::Close(code) => {
                return Err(match code {
                    Some(c) => format!("broker closed the WebSocket (status {c})"),
                    None => "broker closed the WebSocket".into(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_layer_upgrades_then_frames() {
        let mut layer = Layer::new(Transport::Ws, None, "127.0.0.1:8080", "/mqtt", 1).unwrap();
        let (mut wbuf, mut rbuf, mut sock) = (BytesMut::new(), BytesMut::new(), Vec::new());
        // CONNECT waits for the 101: only the request goes out.
        wbuf.extend_from_slice(&[0x10, 0x02, 0xaa, 0xbb]);
        assert_eq!(layer.flush(&mut wbuf, &mut sock), Ok(Flushed::Idle));
        let request = String::from_utf8(sock.clone()).unwrap();
        assert!(request.starts_with("GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert_eq!(wbuf.len(), 4);
        let key = request
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        // The response and the first frame (a CONNACK and a ping) in one read, split oddly.
        let mut response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
            ws::accept_key(key)
        )
        .into_bytes();
        response.extend_from_slice(&[0x82, 0x04, 0x20, 0x02, 0x00, 0x00, 0x89, 0x01, 0x42]);
        let (a, b) = response.split_at(20);
        layer.read(a, &mut rbuf).unwrap();
        layer.read(b, &mut rbuf).unwrap();
        assert_eq!(&rbuf[..], &[0x20, 0x02, 0x00, 0x00]);
        // Now the pong and the CONNECT frame go out, masked.
        sock.clear();
        assert_eq!(layer.flush(&mut wbuf, &mut sock), Ok(Flushed::Idle));
        assert!(wbuf.is_empty());
        let (mut got, mut events) = (BytesMut::new(), Vec::new());
        Decoder::default()
            .decode(&sock, &mut got, &mut events)
            .unwrap();
        assert_eq!(&got[..], &[0x10, 0x02, 0xaa, 0xbb]);
        assert_eq!(sock[0], 0x80 | ws::OP_PONG);
        // A close from the broker ends the connection.
        assert!(layer.read(&[0x88, 0x02, 0x03, 0xe8], &mut rbuf).is_err());
    }

    #[test]
    fn tls_needs_a_ca_or_insecure() {
        let mut opts = TlsOptions {
            cafile: None,
            insecure: false,
            cert: None,
            key: None,
            server_name: "localhost".into(),
            resume: false,
            version: None,
        };
        assert!(TlsClient::new(&opts).is_err());
        opts.insecure = true;
        let client = TlsClient::new(&opts).unwrap();
        let mut layer = Layer::new(Transport::Tls, Some(&client), "h", "/", 0).unwrap();
        // The ClientHello goes out at once, the MQTT bytes wait inside rustls.
        let (mut wbuf, mut sock) = (BytesMut::from(&[0x10u8, 0x00][..]), Vec::new());
        assert_eq!(layer.flush(&mut wbuf, &mut sock), Ok(Flushed::Idle));
        assert!(wbuf.is_empty());
        assert_eq!(sock[0], 0x16, "a TLS handshake record");
        opts.version = Some("1.2".into());
        opts.server_name = "not a name".into();
        assert!(TlsClient::new(&opts).is_err());
    }
}
