//! Kernel TLS: after the handshake in rustls, the session's keys go to the kernel
//! (`TCP_ULP "tls"`, `TLS_TX`/`TLS_RX`) and the kernel encrypts and decrypts. Where the
//! kernel has no `tls` module, the same wire protocol runs with rustls in userspace.
//!
//! Which path a daemon takes is probed once at start-up (the `ktls` crate sets up each
//! cipher on a loopback socket): a failed offload consumes the TLS session, so it cannot
//! fall back per connection. Only cipher suites the kernel accepted are offered, so the
//! negotiated one can always be offloaded.

use std::{os::fd::AsRawFd, sync::Arc};

use anyhow::{Context, Result};
use ktls::{CompatibleCiphers, CorkStream};
use rustls::{SupportedCipherSuite, crypto::CryptoProvider};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_rustls::{client, server};

use super::kernel_tls::KernelTls;
use crate::metrics::METRICS;

/// A tunnel stream after the handshake in rustls.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// An established tunnel: the kernel encrypts (bytes are spliced), or rustls does.
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
}

impl Offload {
    /// Probes the kernel (needs a tokio runtime).
    pub async fn probe() -> Self {
        let ciphers = match CompatibleCiphers::new().await {
            Ok(ciphers) => ciphers,
            Err(e) => {
                tracing::warn!("kernel TLS probe failed ({e}); tunnels use userspace TLS");
                return Self::userspace();
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
            return Self::userspace();
        }
        let names: Vec<String> = suites.iter().map(|s| format!("{:?}", s.suite())).collect();
        tracing::info!(suites = ?names, "kernel TLS available; tunnels offload to the kernel");
        Self {
            kernel: Some(suites),
        }
    }

    pub fn userspace() -> Self {
        Self { kernel: None }
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

    /// Hands a client session to the kernel, or keeps it in rustls.
    pub async fn client(
        &self,
        stream: client::TlsStream<CorkStream<TcpStream>>,
    ) -> Result<TunnelStream> {
        match self.keeps_in_userspace(&stream.get_ref().0.io) {
            Some(reason) => Ok(counted(TunnelStream::Userspace(Box::new(stream)), reason)),
            None => offloaded(ktls::config_ktls_client(stream).await),
        }
    }

    /// Hands a server session to the kernel, or keeps it in rustls.
    pub async fn server(
        &self,
        stream: server::TlsStream<CorkStream<TcpStream>>,
    ) -> Result<TunnelStream> {
        match self.keeps_in_userspace(&stream.get_ref().0.io) {
            Some(reason) => Ok(counted(TunnelStream::Userspace(Box::new(stream)), reason)),
            None => offloaded(ktls::config_ktls_server(stream).await),
        }
    }

    /// Why a session stays in rustls: the kernel has no TLS, or the peer has already
    /// closed its side (a fast client that sent everything and half-closed while this end
    /// finished its handshake), which the kernel refuses to offload (ENOTCONN) but rustls
    /// serves to the end.
    fn keeps_in_userspace(&self, socket: &TcpStream) -> Option<&'static str> {
        if self.kernel.is_none() {
            return Some("no_kernel_tls");
        }
        (!established(socket)).then_some("peer_closed")
    }
}

/// `TCP_ESTABLISHED` in the kernel's TCP states (include/net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;

/// Whether the socket is still in TCP's ESTABLISHED state (no FIN received yet).
fn established(socket: &TcpStream) -> bool {
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the buffer and its length describe a valid tcp_info.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    rc == 0 && info.tcpi_state == TCP_ESTABLISHED
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

/// The outcome of a hand-off to the kernel; a failure is counted with the step that
/// failed (a bounded set: the `ktls` crate's error kinds).
fn offloaded(result: Result<ktls::KtlsStream<TcpStream>, ktls::Error>) -> Result<TunnelStream> {
    match result {
        Ok(stream) => Ok(counted(TunnelStream::Kernel(half_closable(stream)), "")),
        Err(e) => {
            let reason = format!("{e:?}");
            let reason = reason.split(['(', ' ']).next().unwrap_or("unknown");
            METRICS
                .tls_offload
                .with_label_values(&["failed", reason])
                .inc();
            Err(e).context("kernel TLS offload")
        }
    }
}

/// The `ktls` crate did the key hand-off; our stream carries the bytes.
fn half_closable(offloaded: ktls::KtlsStream<TcpStream>) -> KernelTls {
    let (drained, io) = offloaded.into_raw();
    KernelTls::new(io, drained)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_socket_whose_peer_closed_is_no_longer_established() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert!(established(&server));
        client.shutdown().await.unwrap();
        let mut waited = 0;
        while established(&server) && waited < 100 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            waited += 1;
        }
        assert!(!established(&server), "the FIN moved it to CLOSE_WAIT");
    }
}
