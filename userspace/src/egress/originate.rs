//! Dialing an external service for a pod, and originating TLS when a rule says so: the
//! workload's SVID (ISTIO_MUTUAL), a client certificate from files (MUTUAL), or server
//! authentication only (SIMPLE). The session goes to the kernel where it can, as the
//! tunnel's does.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use rustls::{ClientConfig, RootCertStore, crypto::CryptoProvider, pki_types::ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::{
    context::pod::PodContext,
    failure::{Failure, Result},
    tls::{self, configs, offload::TunnelStream, verify::ExpectedServer},
};
use hawser_model::egress::{ClientTls, TlsMode, route::Origination};

/// Connects from inside the pod's namespace to the upstream.
pub async fn dial(pod: &PodContext, o: &Origination) -> Result<TcpStream> {
    pod.connect(o.upstream).await
}

/// Dials and originates TLS as `settings` say.
pub async fn tls(pod: &PodContext, o: &Origination, settings: &ClientTls) -> Result<TunnelStream> {
    let offload = &pod.shared.offload;
    let config = client_config(pod, o, settings, offload.provider())?;
    let sni = settings.sni.as_deref().unwrap_or(&o.host);
    // A wildcard host or an address is no name to send: the upstream's IP goes instead.
    let name = ServerName::try_from(sni.to_string())
        .ok()
        .filter(|_| !sni.starts_with('*'))
        .unwrap_or_else(|| ServerName::IpAddress(o.upstream.ip().into()));
    let tcp = dial(pod, o).await?;
    let stream = tls::connect("egress", o.upstream, tcp, Arc::new(config), name, offload).await?;
    Ok(match offload.client(stream).await? {
        TunnelStream::Userspace(s) => TunnelStream::Userspace(Box::new(EofWithoutCloseNotify(s))),
        kernel => kernel,
    })
}

/// Many servers (nginx among them) close without TLS `close_notify`. As Envoy does for
/// originated TLS, that ends the stream instead of failing it: the app speaks HTTP or
/// its own protocol over the plain side and relies on that protocol's framing.
struct EofWithoutCloseNotify<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for EofWithoutCloseNotify<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for EofWithoutCloseNotify<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

fn client_config(
    pod: &PodContext,
    o: &Origination,
    settings: &ClientTls,
    provider: Arc<CryptoProvider>,
) -> Result<ClientConfig> {
    let (roots, identity) = match settings.mode {
        TlsMode::IstioMutual => {
            let (svid, bundle) = pod.credentials()?;
            let roots = Arc::new(configs::roots(&bundle)?);
            (roots, Some(configs::svid_identity(&svid)?))
        }
        _ => {
            let material = pod.shared.credentials.client(settings)?;
            let roots = match &material.roots {
                Some(roots) => roots.clone(),
                None => system_roots()?,
            };
            let identity = match (&material.key, settings.mode) {
                (Some(key), TlsMode::Mutual) => Some((material.chain.clone(), key.clone_key())),
                _ => None,
            };
            (roots, identity)
        }
    };
    let check = ExpectedServer {
        roots,
        names: expected_names(o, settings),
        provider: provider.clone(),
    };
    configs::origination(check, identity, provider)
}

/// `subjectAltNames` when given, else the SNI (or the host): one must be in the server's
/// certificate.
fn expected_names(o: &Origination, settings: &ClientTls) -> Vec<String> {
    match settings.subject_alt_names.is_empty() {
        false => settings.subject_alt_names.clone(),
        true => vec![settings.sni.clone().unwrap_or_else(|| o.host.clone())],
    }
}

fn system_roots() -> Result<Arc<RootCertStore>> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        return Err(Failure::Credentials(
            "no caCertificates given and no system CA roots found".into(),
        ));
    }
    Ok(Arc::new(store))
}
