//! Kernel TLS: after the handshake in rustls, the session's keys go to the kernel
//! (`TCP_ULP "tls"`, `TLS_TX`/`TLS_RX`) and the kernel encrypts and decrypts. Where the
//! kernel has no `tls` module, the same wire protocol runs with rustls in userspace.
//!
//! Which path a daemon takes is probed once at start-up (the `ktls` crate sets up each
//! cipher on a loopback socket): a failed offload consumes the TLS session, so it cannot
//! fall back per connection. Only cipher suites the kernel accepted are offered, so the
//! negotiated one can always be offloaded.

use std::sync::Arc;

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
        if self.kernel.is_none() {
            return Ok(counted(TunnelStream::Userspace(Box::new(stream))));
        }
        offloaded(ktls::config_ktls_client(stream).await)
    }

    /// Hands a server session to the kernel, or keeps it in rustls.
    pub async fn server(
        &self,
        stream: server::TlsStream<CorkStream<TcpStream>>,
    ) -> Result<TunnelStream> {
        if self.kernel.is_none() {
            return Ok(counted(TunnelStream::Userspace(Box::new(stream))));
        }
        offloaded(ktls::config_ktls_server(stream).await)
    }
}

/// Counts where an established tunnel's TLS runs.
fn counted(stream: TunnelStream) -> TunnelStream {
    let (result, reason) = match &stream {
        TunnelStream::Kernel(_) => ("ktls", ""),
        TunnelStream::Userspace(_) => ("userspace", "no_kernel_tls"),
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
        Ok(stream) => Ok(counted(TunnelStream::Kernel(half_closable(stream)))),
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
