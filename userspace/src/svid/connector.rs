//! The TLS connection under the CA client. The CA's serving certificate is checked by
//! name against the roots of the trust bundle the CA itself published (`--ca-root` only
//! until the first bundle arrives), so the CA can move to a new intermediate or a new root
//! without a node daemon restarting: new roots reach the bundle before anything is signed
//! by them, and a root dropped from the bundle is no longer trusted for the CA either.

use std::{
    io,
    sync::{Arc, RwLock},
};

use anyhow::{Context, Result, bail};
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::{RootCertStore, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::{identity::certs, tls::configs};

/// The roots the CA's certificate must chain to, shared with the client that updates them.
#[derive(Clone)]
pub struct CaRoots(Arc<RwLock<Vec<String>>>);

impl CaRoots {
    /// `pem`: the first-contact roots (`--ca-root`), one or more certificates.
    pub fn new(pem: &str) -> Result<Self> {
        let roots = certs::split_pem(pem).context("--ca-root")?;
        if roots.is_empty() {
            bail!("--ca-root holds no certificate");
        }
        Ok(Self(Arc::new(RwLock::new(roots))))
    }

    /// From now on, the roots of the CA's latest bundle.
    pub fn follow_bundle(&self, roots: &[String]) {
        let mut current = self.0.write().unwrap_or_else(|p| p.into_inner());
        if *current != roots {
            tracing::info!(
                roots = roots.len(),
                "the CA is now verified with the trust bundle's roots"
            );
            *current = roots.to_vec();
        }
    }

    fn store(&self) -> io::Result<RootCertStore> {
        let mut store = RootCertStore::empty();
        for pem in self.0.read().unwrap_or_else(|p| p.into_inner()).iter() {
            let der = certs::der(pem).map_err(|e| io::Error::other(format!("{e:#}")))?;
            store.add(der.into()).map_err(io::Error::other)?;
        }
        Ok(store)
    }
}

/// Connects to the CA at `uri` over TLS, checking `server_name` against `roots`.
pub async fn connect(
    uri: Uri,
    server_name: ServerName<'static>,
    roots: CaRoots,
) -> io::Result<TokioIo<TlsStream<TcpStream>>> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::other("the CA address has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((host, uri.port_u16().unwrap_or(443))).await?;
    let config = configs::ca_client(roots.store()?).map_err(io::Error::other)?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await?;
    Ok(TokioIo::new(tls))
}
