//! The hand-off after the handshake in rustls: the session's keys go to the kernel
//! (`TCP_ULP "tls"`, `TLS_TX`/`TLS_RX`) and the kernel encrypts and decrypts. Where the
//! kernel has no `tls` module, a TLS 1.3 session goes to the daemon's own record layer
//! (`records`), which works as the kernel does, and TLS 1.2 (originated for servers
//! outside the mesh) stays in rustls.
//!
//! Which path a daemon takes is probed once at start-up (the `ktls` crate sets up each
//! cipher on a loopback socket). Only cipher suites the kernel accepted are offered, so the
//! negotiated one can always be offloaded.
//!
//! The `tls` ULP goes on each socket before its handshake (`prepare`): the kernel installs
//! it only on an ESTABLISHED socket, and a peer that sends everything and half-closes
//! while this end finishes its handshake would otherwise make the hand-off fail. Until the
//! keys follow, a socket with the ULP is plain TCP, so rustls does the handshake as usual.

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    time::Duration,
};

use ktls::{CompatibleCiphers, CryptoInfo};
use rustls::{
    ConnectionTrafficSecrets, ProtocolVersion, SupportedCipherSuite, crypto::CryptoProvider,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{TlsStream, client, server};

use hawser_model::preamble::{ALPN, ALPN_SERIAL};

use super::{
    kernel_tls::KernelTls,
    records::{RecordStream, Taken},
    socket::Socket,
};
use crate::{
    failure::{Failure, Result},
    metrics::METRICS,
};

/// A tunnel stream after the handshake: the daemon's record layer, or rustls.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An established tunnel: the kernel encrypts (bytes are spliced), or the daemon does.
pub enum TunnelStream {
    Kernel(KernelTls),
    Userspace(Box<dyn Stream>),
}

/// Which path a connection's bytes took, for the access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPath {
    Kernel,
    Userspace,
}

impl TlsPath {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsPath::Kernel => "ktls",
            TlsPath::Userspace => "userspace",
        }
    }
}

pub struct Offload {
    /// Cipher suites the kernel can take over; None when it has no kTLS.
    kernel: Option<Vec<SupportedCipherSuite>>,
    /// The most records a kTLS socket may send under one key, below its cipher's limit
    /// (`kernel_tls::SendBudget`); also for kTLS sockets adopted from a predecessor
    /// daemon when this one has no kTLS of its own.
    records_per_key: u64,
}

impl Offload {
    /// Probes the kernel (needs a tokio runtime); a kTLS socket's key sends at most
    /// `records_per_key` records.
    pub async fn probe(records_per_key: u64) -> Self {
        let ciphers = match CompatibleCiphers::new().await {
            Ok(ciphers) => ciphers,
            Err(e) => {
                tracing::warn!("kernel TLS probe failed ({e}); tunnels use userspace TLS");
                return Self::userspace(records_per_key);
            }
        };
        // TLS 1.2 suites stay for originated TLS (external servers may not speak 1.3);
        // the tunnel itself only ever negotiates 1.3.
        let suites: Vec<SupportedCipherSuite> = rustls::crypto::aws_lc_rs::default_provider()
            .cipher_suites
            .into_iter()
            .filter(|s| ciphers.is_compatible(*s))
            .collect();
        if suites.is_empty() {
            tracing::warn!(
                "the kernel has no TLS offload (no `tls` module?); tunnels use userspace TLS"
            );
            return Self::userspace(records_per_key);
        }
        let names: Vec<String> = suites.iter().map(|s| format!("{:?}", s.suite())).collect();
        tracing::info!(suites = ?names, "kernel TLS available; tunnels offload to the kernel");
        Self {
            kernel: Some(suites),
            records_per_key,
        }
    }

    /// No kTLS of its own; `records_per_key` for the kTLS sockets it adopts.
    pub fn userspace(records_per_key: u64) -> Self {
        Self {
            kernel: None,
            records_per_key,
        }
    }

    /// The operator's bound on records per key of a kTLS socket.
    pub fn records_per_key(&self) -> u64 {
        self.records_per_key
    }

    pub fn path(&self) -> TlsPath {
        if self.kernel.is_some() {
            TlsPath::Kernel
        } else {
            TlsPath::Userspace
        }
    }

    /// The crypto provider for tunnel handshakes: only offloadable suites when offloading.
    pub fn provider(&self) -> Arc<CryptoProvider> {
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        if let Some(suites) = &self.kernel {
            provider.cipher_suites = suites.clone();
        }
        Arc::new(provider)
    }

    /// A connected socket ready for its handshake: with the kernel's TLS ULP where the
    /// kernel has TLS (see the module's comment), read ahead where it has not.
    pub fn prepare(&self, tcp: TcpStream) -> Socket {
        if self.kernel.is_none() {
            return Socket::read_ahead(tcp);
        }
        match set_ulp(tcp.as_raw_fd()) {
            Ok(()) => Socket::corked(tcp),
            Err(e) => {
                tracing::debug!("TLS ULP not installed, this session stays in userspace: {e}");
                Socket::read_ahead(tcp)
            }
        }
    }

    /// Reads the server's session tickets before the session leaves rustls, for the kernel
    /// or the daemon's record layer (neither can keep them), for at most `wait` (and
    /// `MAX_TICKET_WAIT`): for a session made ahead of its connection (a spare). A serial
    /// session stays in rustls, which reads them itself. Ok also when none came in time
    /// (a server that sends none); an error when the server sent anything else.
    pub async fn read_tickets(
        &self,
        stream: &mut client::TlsStream<Socket>,
        wait: Duration,
    ) -> io::Result<()> {
        if stream.get_ref().1.alpn_protocol() == Some(ALPN_SERIAL) {
            return Ok(());
        }
        match wait_for_tickets(stream, wait.min(MAX_TICKET_WAIT)).await? {
            Waited::Tickets | Waited::TimedOut => Ok(()),
            // A byte read is a byte taken: such a session is never used (it fails here).
            Waited::Reply(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the server sent data before the session carried a stream",
            )),
            Waited::End => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the session before its tickets",
            )),
        }
    }

    /// Hands a client session to the kernel or the record layer, or keeps it in rustls.
    /// A tunnel's session bound for the record layer first reads its server's tickets, as
    /// a spare does: they come before any reply (the server sends them as its handshake
    /// ends), so the wait costs the reply nothing, and the connection's handshake brings
    /// the tickets the next one resumes from. The wait ends at the first bytes of a reply
    /// (kept for the app), or after `CONNECTION_TICKET_WAIT` (a server that sends none),
    /// which is as long as the app's bytes after its first ones may wait. One bound for
    /// the kernel hands off at once: a successor daemon takes over a kTLS connection only
    /// once its relay runs, and an upgrade during the wait cut connections (seen in the
    /// VM's upgrade test); there only spares bring tickets.
    pub async fn client(&self, mut stream: client::TlsStream<Socket>) -> Result<TunnelStream> {
        let mut first = Vec::new();
        let kernel = matches!(stream.get_ref().0, Socket::Corked(_));
        if !kernel && stream.get_ref().1.alpn_protocol() == Some(ALPN) {
            let waited = wait_for_tickets(&mut stream, CONNECTION_TICKET_WAIT).await;
            match waited.map_err(|e| Failure::io("the tunnel's session tickets", e))? {
                Waited::Reply(reply) => first = reply,
                Waited::Tickets | Waited::TimedOut | Waited::End => {}
            }
        }
        self.hand_off(stream.into(), first).await
    }

    /// Hands a server session to the kernel or the record layer, or keeps it in rustls.
    pub async fn server(&self, stream: server::TlsStream<Socket>) -> Result<TunnelStream> {
        self.hand_off(stream.into(), Vec::new()).await
    }

    /// `first`: plaintext read from rustls already, before what it holds still.
    async fn hand_off(
        &self,
        mut stream: TlsStream<Socket>,
        first: Vec<u8>,
    ) -> Result<TunnelStream> {
        let kernel = matches!(stream.get_ref().0, Socket::Corked(_));
        if !kernel && !leaves_rustls(stream.get_ref().1) {
            return Ok(counted(
                TunnelStream::Userspace(Box::new(stream)),
                "no_kernel_tls",
            ));
        }
        stream.get_mut().0.cork();
        let drained = drain(&mut stream, first).await;
        let (io, session): (Socket, rustls::Connection) = match stream {
            TlsStream::Client(s) => {
                let (io, session) = s.into_inner();
                (io, session.into())
            }
            TlsStream::Server(s) => {
                let (io, session) = s.into_inner();
                (io, session.into())
            }
        };
        let step = if kernel {
            kernel_tls(io, drained, session, self.records_per_key)
        } else {
            records(io, drained, session, self.records_per_key)
        };
        match step {
            Ok(stream) => Ok(counted(stream, "no_kernel_tls")),
            Err((step, e)) => {
                METRICS
                    .tls_offload
                    .with_label_values(&["failed", step])
                    .inc();
                Err(Failure::Offload { step, error: e })
            }
        }
    }
}

/// Without kernel TLS, which sessions leave rustls for the daemon's record layer: the
/// mesh's TLS 1.3 tunnels, whose peers are daemons that do not update keys either. TLS
/// with peers outside the mesh (originated, terminated) stays in rustls, which follows a
/// peer's key update; so do serial sessions, whose frames rustls carries.
fn leaves_rustls(session: &rustls::CommonState) -> bool {
    session.protocol_version() == Some(ProtocolVersion::TLSv1_3)
        && session.alpn_protocol() == Some(ALPN)
}

/// The longest a spare session waits for its tickets (they come a round trip after the
/// handshake).
const MAX_TICKET_WAIT: Duration = Duration::from_secs(1);

/// The longest a connection's own session waits for its tickets before it leaves rustls.
const CONNECTION_TICKET_WAIT: Duration = Duration::from_millis(50);

/// How a wait for a server's tickets ended.
enum Waited {
    /// Every ticket asked for came.
    Tickets,
    /// The first bytes of the server's reply came (those rustls had decrypted up to then
    /// at most; the rest stay in rustls).
    Reply(Vec<u8>),
    /// The server closed the session.
    End,
    TimedOut,
}

async fn wait_for_tickets(
    stream: &mut client::TlsStream<Socket>,
    wait: Duration,
) -> io::Result<Waited> {
    let tickets = std::future::poll_fn(|cx| poll_tickets(stream, cx));
    match tokio::time::timeout(wait, tickets).await {
        Ok(waited) => waited,
        Err(_) => {
            tracing::debug!("not every session ticket within {wait:?}");
            Ok(Waited::TimedOut)
        }
    }
}

/// Lets rustls read what the server sent after the handshake until every ticket asked
/// for has come, or something else. Tickets come in one flight, which rustls may cut into
/// records anywhere, even within a ticket: only its last byte ends it, so the session
/// never leaves rustls inside a ticket. (A record left half read when the wait times out
/// is read to its end at the hand-off, see `hand_off`.)
fn poll_tickets(
    stream: &mut client::TlsStream<Socket>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<io::Result<Waited>> {
    use std::task::Poll;
    let mut chunk = [0u8; 4096];
    let mut buf = tokio::io::ReadBuf::new(&mut chunk);
    let polled = std::pin::Pin::new(&mut *stream).poll_read(cx, &mut buf);
    if let Poll::Ready(Err(e)) = polled {
        return Poll::Ready(Err(e));
    }
    if !buf.filled().is_empty() {
        return Poll::Ready(Ok(Waited::Reply(buf.filled().to_vec())));
    }
    let session = stream.get_ref().1;
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    if session.tls13_tickets_received() >= super::configs::tickets_asked(resumed) {
        return Poll::Ready(Ok(Waited::Tickets));
    }
    match polled {
        Poll::Pending => Poll::Pending,
        _ => Poll::Ready(Ok(Waited::End)),
    }
}

fn set_ulp(fd: RawFd) -> io::Result<()> {
    // SAFETY: the option value is the three bytes of "tls".
    let rc =
        unsafe { libc::setsockopt(fd, libc::SOL_TCP, libc::TCP_ULP, c"tls".as_ptr().cast(), 3) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the kernel does the TLS of `fd`'s socket.
pub fn has_tls_ulp(fd: RawFd) -> bool {
    let mut name = [0u8; 16];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: the buffer and its length describe valid memory.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_TCP,
            libc::TCP_ULP,
            name.as_mut_ptr().cast(),
            &mut len,
        )
    };
    rc == 0 && name.starts_with(b"tls")
}

/// The plaintext rustls decrypted beyond the handshake, up to a record boundary (the
/// corked stream reads no further), after what was `drained` from it already: it goes to
/// the app before the socket's bytes. And
/// whether rustls read the peer's `close_notify` (the end of the stream) meanwhile.
async fn drain(
    stream: &mut (impl AsyncRead + Unpin),
    mut drained: Vec<u8>,
) -> io::Result<(Vec<u8>, bool)> {
    let mut chunk = vec![0; 16 * 1024];
    loop {
        match stream.read(&mut chunk).await {
            // rustls says a clean end only after close_notify.
            Ok(0) => return Ok((drained, true)),
            Ok(n) => drained.extend_from_slice(&chunk[..n]),
            // The cork (or the peer's close) ends what rustls reads.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok((drained, false)),
            Err(e) => return Err(e),
        }
    }
}

/// Gives the session's keys to the kernel (the ULP is on since `prepare`).
fn install_keys(
    fd: RawFd,
    suite: SupportedCipherSuite,
    secrets: rustls::ExtractedSecrets,
) -> Result<(), String> {
    for (option, secrets) in [(libc::TLS_TX, secrets.tx), (libc::TLS_RX, secrets.rx)] {
        let info = crypto_info(suite, secrets)?;
        // SAFETY: `info` points to the kernel's crypto-info struct of `info.size()` bytes.
        let rc =
            unsafe { libc::setsockopt(fd, libc::SOL_TLS, option, info.as_ptr(), info.size() as _) };
        if rc != 0 {
            return Err(format!("set keys: {}", io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn crypto_info(
    suite: SupportedCipherSuite,
    secrets: (u64, ConnectionTrafficSecrets),
) -> Result<CryptoInfo, String> {
    CryptoInfo::from_rustls(suite, secrets).map_err(|e| e.to_string())
}

/// Counts where an established tunnel's TLS runs, and why not in the kernel.
fn counted(stream: TunnelStream, userspace_reason: &str) -> TunnelStream {
    let (result, reason) = match &stream {
        TunnelStream::Kernel(_) => ("ktls", ""),
        TunnelStream::Userspace(_) => ("userspace", userspace_reason),
    };
    METRICS
        .tls_offload
        .with_label_values(&[result, reason])
        .inc();
    stream
}

/// A hand-off's failure: the step that failed (a bounded set, for the metric) and why.
type StepFailure = (&'static str, String);

/// A session to the kernel's TLS (the ULP is on since `prepare`), with what rustls
/// decrypted already.
fn kernel_tls(
    io: Socket,
    drained: io::Result<(Vec<u8>, bool)>,
    session: rustls::Connection,
    records_per_key: u64,
) -> Result<TunnelStream, StepFailure> {
    let (drained, _) = drained.map_err(|e| ("drain", e.to_string()))?;
    let (tcp, _) = io.into_parts().map_err(|e| ("boundary", e))?;
    let (suite, secrets) = take_keys(session)?;
    install_keys(tcp.as_raw_fd(), suite, secrets).map_err(|e| ("keys", e))?;
    let drained = (!drained.is_empty()).then_some(drained);
    Ok(TunnelStream::Kernel(KernelTls::new(
        tcp,
        drained,
        records_per_key,
    )))
}

/// A TLS 1.3 session to the daemon's own record layer (`records`): the same protocol as
/// a kTLS socket's, without rustls' buffers and state.
fn records(
    io: Socket,
    drained: io::Result<(Vec<u8>, bool)>,
    session: rustls::Connection,
    records_per_key: u64,
) -> Result<TunnelStream, StepFailure> {
    let (plain, closed) = drained.map_err(|e| ("drain", e.to_string()))?;
    let (tcp, ahead) = io.into_parts().map_err(|e| ("boundary", e))?;
    let (suite, secrets) = take_keys(session)?;
    let taken = Taken {
        plain,
        closed,
        ahead,
    };
    let stream =
        RecordStream::new(tcp, suite, secrets, taken, records_per_key).map_err(|e| ("keys", e))?;
    Ok(TunnelStream::Userspace(Box::new(stream)))
}

/// The cipher suite and the keys of a session leaving rustls.
fn take_keys(
    session: rustls::Connection,
) -> Result<(SupportedCipherSuite, rustls::ExtractedSecrets), StepFailure> {
    let suite = session
        .negotiated_cipher_suite()
        .ok_or(("cipher", "no negotiated cipher suite".to_string()))?;
    let secrets = session
        .dangerous_extract_secrets()
        .map_err(|e| ("secrets", e.to_string()))?;
    Ok((suite, secrets))
}
