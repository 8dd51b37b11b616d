//! Dialing an external service for a pod, and originating TLS when a rule says so: the
//! workload's SVID (ISTIO_MUTUAL), a client certificate from files (MUTUAL), or server
//! authentication only (SIMPLE). The session goes to the kernel where it can, as the
//! tunnel's does.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use anyhow::Result;
use rustls::{
    ClientConfig, RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use crate::{
    context::pod::PodContext,
    identity::certs,
    proxy::sockets,
    tunnel::{
        self,
        offload::TunnelStream,
        tls::{self, ServerCheck, Verifier},
    },
};
use hawser_model::egress::{ClientTls, TlsMode, route::Origination};

/// Connects from inside the pod's namespace to the upstream.
pub async fn dial(pod: &PodContext, o: &Origination) -> Result<TcpStream> {
    let upstream = o.upstream;
    let socket = pod.net.outbound_socket(upstream, None).await?;
    sockets::connect(socket, upstream, pod.shared.keepalive).await
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
    let handshake = TlsConnector::from(Arc::new(config)).connect(name, offload.prepare(tcp));
    let stream = tunnel::bounded("egress", o.upstream, handshake).await?;
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
    let (roots, client) = match settings.mode {
        TlsMode::IstioMutual => {
            let (svid, bundle) = pod.credentials()?;
            (Arc::new(tls::roots(&bundle)?), Some(tls::chain(&svid)?))
        }
        _ => {
            let material = pod.shared.credentials.client(settings)?;
            let roots = match &material.roots {
                Some(roots) => roots.clone(),
                None => system_roots()?,
            };
            let client = match (&material.key, settings.mode) {
                (Some(key), TlsMode::Mutual) => Some((material.chain.clone(), key.clone_key())),
                _ => None,
            };
            (roots, client)
        }
    };
    let verifier = Arc::new(Verifier {
        check: ExpectedServer {
            roots,
            names: expected_names(o, settings),
            provider: provider.clone(),
        },
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_secret_extraction = true;
    Ok(config)
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
    anyhow::ensure!(
        !store.is_empty(),
        "no caCertificates given and no system CA roots found"
    );
    Ok(Arc::new(store))
}

/// The server's chain must reach `roots`, and its certificate must carry one of `names`
/// (DNS names or IPs checked as TLS clients do; `spiffe://` URIs against its URI SANs).
#[derive(Debug)]
struct ExpectedServer {
    roots: Arc<RootCertStore>,
    names: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl ExpectedServer {
    fn carries(
        &self,
        cert: &webpki::EndEntityCert<'_>,
        der: &CertificateDer<'_>,
        name: &str,
    ) -> bool {
        if name.starts_with("spiffe://") {
            let pem = pem::encode(&pem::Pem::new("CERTIFICATE", der.as_ref().to_vec()));
            return certs::info(&pem).is_ok_and(|info| info.uri_sans.iter().any(|u| u == name));
        }
        ServerName::try_from(name).is_ok_and(|n| cert.verify_is_valid_for_subject_name(&n).is_ok())
    }
}

impl ServerCheck for ExpectedServer {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let cert = tls::verify_chain(end_entity, intermediates, &self.roots, &self.provider, now)?;
        if self
            .names
            .iter()
            .any(|n| self.carries(&cert, end_entity, n))
        {
            return Ok(());
        }
        Err(rustls::Error::General(format!(
            "the server certificate is for none of {:?}",
            self.names
        )))
    }
}
