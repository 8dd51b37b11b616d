//! The CA's own TLS. Its serving certificate is issued by the signing material in force.
//! When the material changes it is kept for as long as its root stays in `root-cert.pem`
//! (a daemon that has not polled the new root yet can still reach the CA, and so fetch
//! it), and issued again from the new material once that root is dropped: node daemons,
//! which trust the roots of the bundle they poll, keep reaching the CA through a
//! rotation done in the documented order.
//! Each connection's handshake runs on its own task, bounded in time: a slow or silent
//! client holds up no one.

use std::{
    io,
    sync::{Arc, RwLock},
    time::Duration,
};

use anyhow::{Context, Result};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{Stream, wrappers::ReceiverStream};

use super::HANDSHAKE_TIMEOUT;
use super::pending::Pending;
use crate::{
    identity::{authority::Authority, certs},
    tls::configs,
};

/// How long a serving certificate is valid; it is issued again with each new material.
const VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The certificate the CA serves with now.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// A serving certificate for `names` from the material in force, issued again when the
/// material no longer trusts its root (a failure keeps the one in use, and is logged).
pub fn follow(
    mut authority: watch::Receiver<Arc<Authority>>,
    names: Vec<String>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<ServingCert>> {
    let first = issue(&authority.borrow_and_update(), &names, &provider)?;
    let serving = Arc::new(ServingCert {
        current: RwLock::new(first),
    });
    let updated = serving.clone();
    tokio::spawn(async move {
        while authority.changed().await.is_ok() {
            let material = authority.borrow_and_update().clone();
            let current = updated
                .current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if still_trusted(&current, &material) {
                tracing::info!("CA serving certificate kept: its root is still trusted");
                continue;
            }
            match issue(&material, &names, &provider) {
                Ok(cert) => {
                    *updated.current.write().unwrap_or_else(|p| p.into_inner()) = cert;
                    tracing::info!(signing = %material.signer(), "CA serving certificate issued again");
                }
                Err(e) => tracing::error!("CA serving certificate not renewed: {e:#}"),
            }
        }
    });
    Ok(serving)
}

/// Whether `material` still trusts the root `serving` chains to (its last certificate).
fn still_trusted(serving: &CertifiedKey, material: &Authority) -> bool {
    let Some(root) = serving.cert.last() else {
        return false;
    };
    material
        .roots()
        .iter()
        .any(|pem| certs::der(pem).is_ok_and(|der| der == root.as_ref()))
}

fn issue(
    authority: &Authority,
    names: &[String],
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>> {
    let (chain, key) = authority.server_certificate(names, VALIDITY)?;
    let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the serving chain")?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).context("the serving key")?;
    Ok(Arc::new(CertifiedKey::from_der(chain, key, provider)?))
}

/// Handshakes the CA runs at once for one source address, and in all (see `pending`: over
/// a cap the oldest makes room).
const HANDSHAKES_PER_SOURCE: usize = 16;
const HANDSHAKES: usize = 512;

/// TLS connections accepted on `listener` with `serving`'s certificate, each handshake on
/// its own task within `HANDSHAKE_TIMEOUT` (capped per source and in all), and the
/// accepting task, which ends (closing the listener) once the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    serving: Arc<ServingCert>,
) -> Result<(
    impl Stream<Item = io::Result<TlsStream<TcpStream>>>,
    JoinHandle<()>,
)> {
    let acceptor = TlsAcceptor::from(Arc::new(configs::ca_server(serving)?));
    let (tx, rx) = mpsc::channel(64);
    let handshakes = Pending::new(HANDSHAKES_PER_SOURCE, HANDSHAKES);
    let accepting = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return, // the server has stopped: the port is let go
            };
            let (conn, place) = match accepted {
                Ok((conn, peer)) => (conn, handshakes.enter(peer.ip())),
                Err(e) => {
                    tracing::warn!("CA accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn));
                let handshake = tokio::select! {
                    handshake = handshake => handshake,
                    () = place.evicted.cancelled() => return,
                };
                drop(place);
                match handshake {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!("CA TLS handshake: {e}"),
                    Err(_) => tracing::debug!("CA TLS handshake: timed out"),
                }
            });
        }
    });
    Ok((ReceiverStream::new(rx), accepting))
}
