//! A TLS 1.3 session's record layer in the daemon, after rustls did the handshake: what
//! the kernel does for a kTLS socket, for daemons whose kernel has no TLS. rustls' session
//! (its 4 KiB record buffer, which it keeps once it has read, its state, the peer's chain)
//! is dropped at the hand-off; what stays per connection is the two keys, the socket, and
//! buffers only while bytes are in flight.
//!
//! It behaves as a kTLS socket does, so that both paths keep one protocol: records of up
//! to 16 KiB sealed with rustls' AEAD; the server's session tickets that come after the
//! hand-off passed over (`TicketFlight`); `close_notify` as the end of the stream; any
//! other alert, a KeyUpdate or a record that does not decrypt ends the connection; and a
//! key seals at most its cipher's limit of records (rustls' figure, or the operator's
//! lower one), one kept for `close_notify`, after which the connection ends: TLS 1.3 key
//! updates need the traffic secret, which rustls does not hand over with the keys.
//!
//! Records are sealed with aws-lc's AEADs as RFC 8446 §5.2–5.3 builds them (the nonce is
//! the key's IV XOR the record's sequence number; the header is the additional data),
//! not with rustls' sealers: rustls' AES-GCM sealer takes the first record it seals for
//! the key's first (aws-lc checks TLS 1.3 nonces that way), and a server's key has sealed
//! its session tickets before the hand-off.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, ready},
};

use aws_lc_rs::aead::{
    AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey,
};
use bytes::{Buf, BytesMut};
use rustls::{ConnectionTrafficSecrets, ContentType, ExtractedSecrets, SupportedCipherSuite};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::kernel_tls::TicketFlight;

/// The most plaintext one record carries (RFC 8446 §5.1).
const MAX_FRAGMENT: usize = 16 * 1024;
/// The most a TLS 1.3 record's body may hold: the fragment, its content type, padding and
/// the AEAD's tag (RFC 8446 §5.2).
const MAX_BODY: usize = MAX_FRAGMENT + 256;
const HEADER: usize = 5;
/// Bytes read from the socket at once.
const READ_AHEAD: usize = 64 * 1024;
/// Plaintext sealed per write at most: four full records, one system call.
const SEAL_AT_ONCE: usize = 4 * MAX_FRAGMENT;

const ALERT_WARNING: u8 = 1;
const CLOSE_NOTIFY: u8 = 0;

/// What a session brings from rustls to the record layer.
pub struct Taken {
    /// What rustls decrypted already: it comes first.
    pub plain: Vec<u8>,
    /// rustls read the peer's `close_notify` already.
    pub closed: bool,
    /// Bytes read from the socket past the record where rustls stopped.
    pub ahead: BytesMut,
}

/// A TLS 1.3 session sealed and opened by the daemon (see the module's comment).
pub struct RecordStream {
    tcp: TcpStream,
    rx: Opener,
    tx: Sealer,
}

impl RecordStream {
    /// Takes over a session at a record boundary (see `Taken`). A key seals at most
    /// `records_per_key` records (or its cipher's limit, if lower).
    pub fn new(
        tcp: TcpStream,
        suite: SupportedCipherSuite,
        secrets: ExtractedSecrets,
        Taken {
            plain,
            closed,
            ahead,
        }: Taken,
        records_per_key: u64,
    ) -> Result<Self, String> {
        let SupportedCipherSuite::Tls13(suite) = suite else {
            return Err("only TLS 1.3 sessions leave rustls".into());
        };
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        let mut buf = BytesMut::with_capacity(plain.len() + ahead.len());
        buf.extend_from_slice(&plain);
        buf.extend_from_slice(&ahead);
        Ok(Self {
            tcp,
            rx: Opener {
                key: RecordKey::new(rx, rx_seq)?,
                plain: 0..plain.len(),
                record_len: plain.len(),
                buf,
                tickets: TicketFlight::default(),
                closed,
                failed: None,
            },
            tx: Sealer {
                key: RecordKey::new(tx, tx_seq)?,
                limit: suite.common.confidentiality_limit.min(records_per_key),
                out: BytesMut::new(),
                closed: false,
                failed: None,
            },
        })
    }
}

/// One direction's key, its IV and the next record's sequence number.
struct RecordKey {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
}

impl RecordKey {
    fn new(secrets: ConnectionTrafficSecrets, seq: u64) -> Result<Self, String> {
        let (algorithm, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return Err("no record layer for the negotiated cipher".into()),
        };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| "the negotiated key does not fit its cipher".to_string())?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| "the negotiated IV does not fit its cipher".to_string())?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The next record's nonce (RFC 8446 §5.3); the sequence number moves on.
    fn next_nonce(&mut self) -> Nonce {
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.seq.to_be_bytes())
        {
            *n ^= s;
        }
        self.seq += 1;
        Nonce::assume_unique_for_key(nonce)
    }

    /// A record of `typ` holding `fragment`, appended to `out`.
    fn seal(&mut self, typ: ContentType, fragment: &[u8], out: &mut BytesMut) -> io::Result<()> {
        let body_len = fragment.len() + 1 + self.key.algorithm().tag_len();
        let start = out.len();
        let header = record_header(body_len);
        out.extend_from_slice(&header);
        out.extend_from_slice(fragment);
        out.extend_from_slice(&[u8::from(typ)]);
        let nonce = self.next_nonce();
        let sealed = self.key.seal_in_place_separate_tag(
            nonce,
            Aad::from(header),
            &mut out[start + HEADER..],
        );
        let Ok(tag) = sealed else {
            // Never on the wire: the plaintext was not sealed.
            out.truncate(start);
            return Err(io::Error::other("sealing a record failed"));
        };
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens a record's `body` in place: its content type and plaintext length.
    fn open(&mut self, header: [u8; HEADER], body: &mut [u8]) -> io::Result<(u8, usize)> {
        let nonce = self.next_nonce();
        let inner = self
            .key
            .open_in_place(nonce, Aad::from(header), body)
            .map_err(|_| invalid("a record did not decrypt".into()))?;
        // The inner plaintext: content, the content type, then zeros of padding.
        let Some(end) = inner.iter().rposition(|&b| b != 0) else {
            return Err(invalid("a record with no content type".into()));
        };
        if end > MAX_FRAGMENT {
            return Err(invalid(format!("a record of {end} bytes of content")));
        }
        Ok((inner[end], end))
    }
}

fn record_header(body_len: usize) -> [u8; HEADER] {
    let [hi, lo] = (body_len as u16).to_be_bytes();
    [u8::from(ContentType::ApplicationData), 3, 3, hi, lo]
}

/// The receiving half: records read ahead into `buf` and opened in place.
struct Opener {
    key: RecordKey,
    buf: BytesMut,
    /// The opened plaintext not yet read, within `buf`.
    plain: std::ops::Range<usize>,
    /// The bytes of `buf` the opened record takes, dropped once its plaintext is read.
    record_len: usize,
    tickets: TicketFlight,
    /// The peer's `close_notify` came: the end of the stream.
    closed: bool,
    /// The error that ended the stream, for every read after it.
    failed: Option<Failed>,
}

/// An error that ended a direction: a stream is not read or written after one.
#[derive(Clone, Copy)]
struct Failed(io::ErrorKind);

/// A direction that fails for good at its first error.
trait Latching: Sized {
    fn failed(&mut self) -> &mut Option<Failed>;

    /// Runs `poll` unless this direction failed before; keeps its error for every call
    /// after.
    fn latched<T>(
        &mut self,
        poll: impl FnOnce(&mut Self) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if let Some(Failed(kind)) = *self.failed() {
            return Poll::Ready(Err(io::Error::new(kind, "the TLS session failed before")));
        }
        let result = ready!(poll(self));
        if let Err(e) = &result {
            *self.failed() = Some(Failed(e.kind()));
        }
        Poll::Ready(result)
    }
}

impl Latching for Opener {
    fn failed(&mut self) -> &mut Option<Failed> {
        &mut self.failed
    }
}

impl Latching for Sealer {
    fn failed(&mut self) -> &mut Option<Failed> {
        &mut self.failed
    }
}

impl Opener {
    fn poll_read(
        &mut self,
        tcp: &TcpStream,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.latched(|this| this.poll_read_plain(tcp, cx, out))
    }

    fn poll_read_plain(
        &mut self,
        tcp: &TcpStream,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.plain.is_empty() {
                let n = self.plain.len().min(out.remaining());
                out.put_slice(&self.buf[self.plain.start..][..n]);
                self.plain.start += n;
                if self.plain.is_empty() {
                    self.consume_record();
                }
                return Poll::Ready(Ok(()));
            }
            self.consume_record();
            if self.closed {
                return Poll::Ready(Ok(()));
            }
            if self.open_record()? {
                continue;
            }
            ready!(tcp.poll_read_ready(cx))?;
            self.buf.reserve(READ_AHEAD);
            match tcp.try_read_buf(&mut self.buf) {
                Ok(0) => return Poll::Ready(Err(cut_short(self.buf.len()))),
                Ok(_) => {}
                // Nothing more for now: a wait between records holds no buffer (one
                // within a record keeps it, as rustls' read-ahead would).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.buf.is_empty() {
                        self.buf = BytesMut::new();
                    }
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Drops the record whose plaintext was read, and the buffer once it is empty (an
    /// idle connection holds none).
    fn consume_record(&mut self) {
        self.buf.advance(self.record_len);
        self.record_len = 0;
        self.plain = 0..0;
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Opens the record at the start of `buf` if it has come whole: true when it was
    /// opened (its plaintext, if any, in `plain`), false when more bytes must come.
    fn open_record(&mut self) -> io::Result<bool> {
        if self.buf.len() < HEADER {
            return Ok(false);
        }
        let header: [u8; HEADER] = self.buf[..HEADER].try_into().expect("a header");
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if header[..3] != record_header(0)[..3] || len > MAX_BODY {
            return Err(invalid(format!(
                "not a TLS 1.3 record: header {header:02x?}"
            )));
        }
        if self.buf.len() < HEADER + len {
            return Ok(false);
        }
        let (typ, plain_len) = self.key.open(header, &mut self.buf[HEADER..HEADER + len])?;
        let typ = ContentType::from(typ);
        self.record_len = HEADER + len;
        let payload = &self.buf[HEADER..HEADER + plain_len];
        // TLS 1.3 puts no other record within a handshake message that spans records.
        if self.tickets.is_open() && typ != ContentType::Handshake {
            return Err(invalid(
                "a record within a session ticket that spans records".into(),
            ));
        }
        match typ {
            ContentType::ApplicationData => self.plain = HEADER..HEADER + plain_len,
            ContentType::Alert => {
                close_notify(payload)?;
                self.closed = true;
            }
            ContentType::Handshake if self.tickets.pass_over(payload) => {}
            ContentType::Handshake => {
                return Err(invalid(
                    "the peer sent a handshake message other than a session ticket \
                     (a key update, which a session out of rustls cannot take)"
                        .into(),
                ));
            }
            other => return Err(invalid(format!("a record of type {other:?}"))),
        }
        Ok(true)
    }
}

/// An alert: `close_notify` ends the stream, any other ends it with an error (as a kTLS
/// socket's relay takes them).
fn close_notify(alert: &[u8]) -> io::Result<()> {
    match alert {
        [_, CLOSE_NOTIFY] => Ok(()),
        [level, description] => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("the peer sent TLS alert {description} (level {level})"),
        )),
        _ => Err(invalid("a malformed alert".into())),
    }
}

/// The sending half: plaintext sealed into records, written at once where the socket
/// takes them, kept in `out` (for `poll_flush`) where it does not.
struct Sealer {
    key: RecordKey,
    /// Records this key may seal, `close_notify` included.
    limit: u64,
    /// Sealed records not yet written (written from the front: no bytes move).
    out: BytesMut,
    /// `close_notify` was sealed.
    closed: bool,
    /// The error that ended sending, for every call after it.
    failed: Option<Failed>,
}

impl Sealer {
    fn poll_write(
        &mut self,
        tcp: &TcpStream,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.latched(|this| this.poll_seal(tcp, cx, data))
    }

    fn poll_seal(
        &mut self,
        tcp: &TcpStream,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_flush_out(tcp, cx))?;
        if self.closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS session was closed for sending",
            )));
        }
        // One record kept for close_notify.
        let left = self.limit.saturating_sub(self.key.seq).saturating_sub(1);
        if left == 0 {
            return Poll::Ready(Err(io::Error::other(format!(
                "the TLS session's key has sealed {} of the {} records it may (a new connection gets a new key)",
                self.key.seq, self.limit
            ))));
        }
        let fits = usize::try_from(left).map_or(usize::MAX, |n| n.saturating_mul(MAX_FRAGMENT));
        let n = data.len().min(SEAL_AT_ONCE).min(fits);
        for fragment in data[..n].chunks(MAX_FRAGMENT) {
            self.seal(ContentType::ApplicationData, fragment)?;
        }
        self.write_out(tcp)?;
        Poll::Ready(Ok(n))
    }

    fn seal(&mut self, typ: ContentType, fragment: &[u8]) -> io::Result<()> {
        self.key.seal(typ, fragment, &mut self.out)
    }

    /// Writes what the socket takes now.
    fn write_out(&mut self, tcp: &TcpStream) -> io::Result<()> {
        while !self.out.is_empty() {
            match tcp.try_write(&self.out) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        self.out = BytesMut::new();
        Ok(())
    }

    fn poll_flush(&mut self, tcp: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.latched(|this| this.poll_flush_out(tcp, cx))
    }

    fn poll_flush_out(&mut self, tcp: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            ready!(tcp.poll_write_ready(cx))?;
            self.write_out(tcp)?;
        }
        Poll::Ready(Ok(()))
    }

    /// Seals `close_notify` (once); the key always has a record kept for it.
    fn close(&mut self) -> io::Result<()> {
        if !self.closed {
            if self.key.seq >= self.limit {
                return Err(io::Error::other(
                    "the TLS session's key has no record left for close_notify",
                ));
            }
            self.seal(ContentType::Alert, &[ALERT_WARNING, CLOSE_NOTIFY])?;
            self.closed = true;
        }
        Ok(())
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The end of the stream without `close_notify`: as rustls reports it (the relay tells a
/// cut from a close by it), `partial` bytes of a record cut short.
fn cut_short(partial: usize) -> io::Error {
    let message = if partial == 0 {
        "the peer closed the connection without close_notify".to_string()
    } else {
        format!("the peer closed the connection within a record ({partial} bytes of it)")
    };
    io::Error::new(io::ErrorKind::UnexpectedEof, message)
}

impl AsyncRead for RecordStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.rx.poll_read(&this.tcp, cx, buf)
    }
}

impl AsyncWrite for RecordStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.tx.poll_write(&this.tcp, cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tx.poll_flush(&this.tcp, cx)
    }

    /// `close_notify`, then FIN.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.tx.closed {
            ready!(this.tx.poll_flush(&this.tcp, cx))?;
            ready!(this.tx.latched(|tx| Poll::Ready(tx.close())))?;
        }
        ready!(this.tx.poll_flush(&this.tcp, cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use rustls::{ClientConfig, RootCertStore, ServerConfig, pki_types::ServerName};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };
    use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

    use hawser_model::preamble::ALPN;

    use super::*;
    use crate::tls::{
        offload::{Offload, Stream, TunnelStream},
        socket::Socket,
    };

    /// A client and a server configuration with `suite`, speaking the mesh's tunnel
    /// protocol (ALPN) when `tunnel`.
    fn configs(
        suite: SupportedCipherSuite,
        tunnel: bool,
    ) -> (Arc<ClientConfig>, Arc<ServerConfig>) {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites = vec![suite];
        let provider = Arc::new(provider);
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(key.cert.der().clone()).unwrap();
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![key.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
            )
            .unwrap();
        client.enable_secret_extraction = true;
        server.enable_secret_extraction = true;
        if tunnel {
            client.alpn_protocols = vec![ALPN.to_vec()];
            server.alpn_protocols = vec![ALPN.to_vec()];
        }
        (Arc::new(client), Arc::new(server))
    }

    const DEFAULT_SUITE: SupportedCipherSuite =
        rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384;

    /// A tunnel session between a rustls client and server on loopback, each side read
    /// as the daemon reads its sessions (`Offload::prepare`).
    async fn session(offload: &Offload) -> (client::TlsStream<Socket>, server::TlsStream<Socket>) {
        session_with(offload, DEFAULT_SUITE, true).await
    }

    async fn session_with(
        offload: &Offload,
        suite: SupportedCipherSuite,
        tunnel: bool,
    ) -> (client::TlsStream<Socket>, server::TlsStream<Socket>) {
        let (client_config, server_config) = configs(suite, tunnel);
        handshake(offload, client_config, server_config).await
    }

    async fn handshake(
        offload: &Offload,
        client_config: Arc<ClientConfig>,
        server_config: Arc<ServerConfig>,
    ) -> (client::TlsStream<Socket>, server::TlsStream<Socket>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let connecting = TlsConnector::from(client_config).connect(name, offload.prepare(tcp));
        let accepting = TlsAcceptor::from(server_config).accept(offload.prepare(accepted));
        let (client, server) = tokio::join!(connecting, accepting);
        (client.unwrap(), server.unwrap())
    }

    fn records(stream: TunnelStream) -> Box<dyn Stream> {
        match stream {
            TunnelStream::Userspace(stream) => stream,
            TunnelStream::Kernel(_) => panic!("no kernel TLS was asked for"),
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Echoes everything until the end of the stream, then closes.
    async fn echo(mut stream: impl AsyncRead + AsyncWrite + Unpin) {
        let mut buf = vec![0; 50_000];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n]).await.unwrap();
        }
        stream.shutdown().await.unwrap();
    }

    /// Sends `sent`, then closes for sending, and reads the echo to its clean end.
    async fn round_trip(mut stream: impl AsyncRead + AsyncWrite + Unpin, sent: &[u8]) -> Vec<u8> {
        let (mut rx, mut tx) = tokio::io::split(&mut stream);
        let writing = async {
            for chunk in sent.chunks(70_000) {
                tx.write_all(chunk).await.unwrap();
            }
            tx.shutdown().await.unwrap();
        };
        let mut received = Vec::new();
        let reading = rx.read_to_end(&mut received);
        let ((), read) = tokio::join!(writing, reading);
        read.unwrap();
        received
    }

    /// A client out of rustls beside a rustls server: the server's session tickets, which
    /// come after the handshake, are passed over; a stream larger than many records
    /// crosses both ways whole; each side's close_notify is the other's clean end.
    #[tokio::test]
    async fn a_client_out_of_rustls_talks_to_rustls_and_passes_its_tickets_over() {
        let offload = Offload::userspace(u64::MAX);
        let (client, server) = session(&offload).await;
        let client = records(offload.client(client).await.unwrap());
        let serving = tokio::spawn(echo(server));
        let sent = pattern(3_000_000);
        assert_eq!(round_trip(client, &sent).await, sent);
        serving.await.unwrap();
    }

    /// A server out of rustls, which had read part of the client's first record through
    /// rustls (as the tunnel's preamble is read): what rustls had opened comes first, then
    /// the records read ahead past it, in order.
    #[tokio::test]
    async fn a_server_out_of_rustls_keeps_what_rustls_had_read_and_what_was_read_ahead() {
        let offload = Offload::userspace(u64::MAX);
        let (mut client, mut server) = session(&offload).await;
        let sent = pattern(200_000);
        client.write_all(&sent).await.unwrap();
        let mut first = [0; 2];
        server.read_exact(&mut first).await.unwrap();
        let serving = async {
            let mut server = records(offload.server(server).await.unwrap());
            server.write_all(&first).await.unwrap();
            echo(server).await;
        };
        let reading = async {
            client.shutdown().await.unwrap();
            let mut received = Vec::new();
            client.read_to_end(&mut received).await.unwrap();
            received
        };
        let ((), received) = tokio::join!(serving, reading);
        assert_eq!(received, sent);
    }

    /// Both ends out of rustls, what two daemons without kernel TLS run, with each TLS 1.3
    /// cipher suite (each its key and IV sizes, and tag).
    #[tokio::test]
    async fn two_sessions_out_of_rustls_talk_to_each_other_in_every_cipher() {
        use rustls::crypto::aws_lc_rs::cipher_suite::{
            TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
        };
        let offload = Offload::userspace(u64::MAX);
        for suite in [
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ] {
            let (client, server) = session_with(&offload, suite, true).await;
            assert_eq!(client.get_ref().1.negotiated_cipher_suite(), Some(suite));
            let (client, server) = tokio::join!(offload.client(client), offload.server(server));
            let serving = tokio::spawn(echo(records(server.unwrap())));
            let sent = pattern(1_000_000);
            assert_eq!(round_trip(records(client.unwrap()), &sent).await, sent);
            serving.await.unwrap();
        }
    }

    /// A tunnel client's session waits for its server's tickets before it leaves rustls,
    /// and keeps the reply that comes with or after them, ahead of the rest.
    #[tokio::test]
    async fn a_client_keeps_the_reply_that_ends_its_wait_for_tickets() {
        let offload = Offload::userspace(u64::MAX);
        let (client, mut server) = session(&offload).await;
        let reply = pattern(100_000);
        server.write_all(&reply).await.unwrap();
        server.shutdown().await.unwrap();
        let mut client = records(offload.client(client).await.unwrap());
        let mut read = Vec::new();
        client.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, reply);
    }

    /// A server that sends no tickets and no reply holds a client's session up for a
    /// bounded time only (the app's bytes after its first ones wait that long).
    #[tokio::test]
    async fn a_server_without_tickets_holds_a_client_up_briefly() {
        let offload = Offload::userspace(u64::MAX);
        let (client_config, server_config) = configs(DEFAULT_SUITE, true);
        let mut server_config = (*server_config).clone();
        server_config.send_tls13_tickets = 0;
        let (client, _server) = handshake(&offload, client_config, Arc::new(server_config)).await;
        let started = std::time::Instant::now();
        records(offload.client(client).await.unwrap());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    /// TLS with a peer outside the mesh (no tunnel ALPN) stays in rustls, which follows
    /// the peer's key update.
    #[tokio::test]
    async fn a_session_outside_the_mesh_stays_in_rustls_and_follows_key_updates() {
        let offload = Offload::userspace(u64::MAX);
        let (mut client, server) = session_with(&offload, DEFAULT_SUITE, false).await;
        let mut server = records(offload.server(server).await.unwrap());
        client.write_all(b"old key").await.unwrap();
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(b", new key").await.unwrap();
        client.shutdown().await.unwrap();
        let mut read = Vec::new();
        server.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, b"old key, new key");
    }

    /// The end of the stream without close_notify, between records or within one, is an
    /// error (the relay resets the app), never a clean end; what came before is read.
    #[tokio::test]
    async fn a_stream_cut_without_close_notify_is_an_error_not_an_end() {
        for within_a_record in [false, true] {
            let offload = Offload::userspace(u64::MAX);
            let (mut client, server) = session(&offload).await;
            client.write_all(b"whole").await.unwrap();
            client.flush().await.unwrap();
            let tcp = client.get_ref().0.tcp();
            if within_a_record {
                tcp.writable().await.unwrap();
                tcp.try_write(&[23, 3, 3, 0, 40, 1, 2, 3]).unwrap();
            }
            socket2::SockRef::from(tcp)
                .shutdown(std::net::Shutdown::Write)
                .unwrap();
            let mut server = records(offload.server(server).await.unwrap());
            let mut read = Vec::new();
            let error = server.read_to_end(&mut read).await.unwrap_err();
            assert_eq!(read, b"whole");
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
        }
    }

    /// A record that does not decrypt (written by someone on the path) ends the stream
    /// with an error, and none of it reaches the reader; neither does what follows it.
    #[tokio::test]
    async fn a_forged_record_ends_the_stream_and_none_of_it_is_read() {
        let offload = Offload::userspace(u64::MAX);
        let (mut client, server) = session(&offload).await;
        client.write_all(b"before").await.unwrap();
        client.flush().await.unwrap();
        let mut forged = vec![23, 3, 3, 0, 40];
        forged.extend([0x5a; 40]);
        let tcp = client.get_mut().0.tcp();
        let mut written = 0;
        while written < forged.len() {
            tcp.writable().await.unwrap();
            written += tcp.try_write(&forged[written..]).unwrap_or(0);
        }
        client.write_all(b"after").await.unwrap();
        client.flush().await.unwrap();

        let mut server = records(offload.server(server).await.unwrap());
        let mut read = Vec::new();
        let error = server.read_to_end(&mut read).await.unwrap_err();
        assert_eq!(read, b"before");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert!(error.to_string().contains("did not decrypt"), "{error}");
        // Nor does a reader that tries again get what followed.
        let again = server.read_to_end(&mut read).await.unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::InvalidData, "{again}");
        assert_eq!(read, b"before");
    }

    /// A peer that updates its key (rustls does at its limit) cannot be followed: the
    /// stream ends with an error that says so, after what came under the first key.
    #[tokio::test]
    async fn a_key_update_from_the_peer_ends_the_stream_with_its_reason() {
        let offload = Offload::userspace(u64::MAX);
        let (mut client, server) = session(&offload).await;
        client.write_all(b"old key").await.unwrap();
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(b"new key").await.unwrap();
        client.flush().await.unwrap();

        let mut server = records(offload.server(server).await.unwrap());
        let mut read = Vec::new();
        let error = server.read_to_end(&mut read).await.unwrap_err();
        assert_eq!(read, b"old key");
        assert!(error.to_string().contains("key update"), "{error}");
    }

    /// A key seals at most its limit of records. All but one may carry data, the last is
    /// kept for close_notify: a stream that ends there ends cleanly. A write past them
    /// fails and the stream with it: no close_notify follows, so the peer reads a cut,
    /// never a clean end of a stream that had more to say.
    #[tokio::test]
    async fn a_key_seals_no_more_than_its_limit_with_a_record_kept_for_close_notify() {
        const LIMIT: u64 = 8;
        let offload = Offload::userspace(LIMIT);
        for past_the_limit in [false, true] {
            let (client, mut server) = session(&offload).await;
            let mut client = records(offload.client(client).await.unwrap());
            // The client's first key sealed nothing before the hand-off.
            for _ in 0..LIMIT - 1 {
                client.write_all(b"x").await.unwrap();
            }
            let mut read = vec![0; LIMIT as usize - 1];
            server.read_exact(&mut read).await.unwrap();
            assert_eq!(read, vec![b'x'; LIMIT as usize - 1]);
            if past_the_limit {
                let error = client.write_all(b"y").await.unwrap_err();
                assert!(error.to_string().contains("records it may"), "{error}");
                client.shutdown().await.unwrap_err();
                drop(client);
                server.read_to_end(&mut read).await.unwrap_err();
            } else {
                client.shutdown().await.unwrap();
                server.read_to_end(&mut read).await.unwrap();
            }
            assert_eq!(read, vec![b'x'; LIMIT as usize - 1], "more came");
        }
    }

    /// A session taken out of rustls right after its handshake, as the hand-off does.
    fn out_of_rustls(socket: Socket, session: rustls::Connection) -> RecordStream {
        let suite = session.negotiated_cipher_suite().unwrap();
        let secrets = session.dangerous_extract_secrets().unwrap();
        let (tcp, ahead) = socket.into_parts().unwrap();
        let taken = Taken {
            plain: Vec::new(),
            closed: false,
            ahead,
        };
        RecordStream::new(tcp, suite, secrets, taken, u64::MAX).unwrap()
    }

    /// A read that waits for more, as a relay's does between bursts.
    async fn wait_for_more(stream: &mut RecordStream) {
        let mut buf = [0; 1024];
        let waiting = stream.read(&mut buf);
        let waited = tokio::time::timeout(Duration::from_millis(20), waiting).await;
        assert!(waited.is_err(), "nothing more was sent");
    }

    fn assert_no_buffers(stream: &RecordStream) {
        assert_eq!(stream.rx.buf.capacity(), 0, "a read buffer is kept");
        assert_eq!(stream.tx.out.capacity(), 0, "a write buffer is kept");
    }

    /// Between bursts a session holds no buffer on either side, nor after records that
    /// carry no data (the server's session tickets).
    #[tokio::test]
    async fn an_idle_session_holds_no_buffers() {
        let offload = Offload::userspace(u64::MAX);
        let (client, server) = session(&offload).await;
        let (client, server) = (client.into_inner(), server.into_inner());
        let mut client = out_of_rustls(client.0, client.1.into());
        let mut server = out_of_rustls(server.0, server.1.into());
        tokio::time::sleep(Duration::from_millis(50)).await;
        wait_for_more(&mut client).await;
        assert!(
            client.rx.tickets.passed() > 0,
            "no ticket came after the hand-off"
        );
        assert_no_buffers(&client);

        let sent = pattern(300_000);
        let echoing = async {
            let mut buf = vec![0; sent.len()];
            server.read_exact(&mut buf).await.unwrap();
            server.write_all(&buf).await.unwrap();
            server.flush().await.unwrap();
        };
        let sending = async {
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            let mut buf = vec![0; sent.len()];
            client.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, sent);
        };
        tokio::join!(echoing, sending);
        for stream in [&mut client, &mut server] {
            wait_for_more(stream).await;
            assert_no_buffers(stream);
        }
    }
}
