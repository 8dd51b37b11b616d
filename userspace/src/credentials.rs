//! Certificates, keys and CA bundles from files: client material for originated TLS (named
//! in a `DestinationRule`), server material and extra trust anchors for inbound TLS
//! (`InboundPorts`); or from a credential directory (`tls.crt`, `tls.key`, `ca.crt`, the
//! layout of a mounted Secret).
//!
//! Files are read on first use and read again when one of them changes (size or mtime,
//! through symlinks, so a Secret update's symlink swap counts): a rotated certificate is
//! used from the next connection on. A broken update keeps the last good material.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::{Context, Result, bail};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use crate::{
    egress::{ClientTls, TlsMode},
    ports::ServerTls,
};

/// Loaded material for one set of files.
pub struct Material {
    /// Leaf first; empty when no certificate is configured.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Option<PrivateKeyDer<'static>>,
    /// From the CA file; None when there is none (for originated TLS: the system's roots).
    pub roots: Option<Arc<RootCertStore>>,
}

/// Which files make up one set of material.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Files {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
}

/// What a file looked like when it was read.
type Stamp = Vec<Option<(SystemTime, u64)>>;

pub struct Credentials {
    /// Where `credentialName` directories live.
    dir: PathBuf,
    cache: Mutex<HashMap<Files, (Stamp, Arc<Material>)>>,
}

impl Credentials {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The client material `tls` names, current as of now. ISTIO_MUTUAL needs none (the
    /// workload's SVID and the mesh's roots are used).
    pub fn client(&self, tls: &ClientTls) -> Result<Arc<Material>> {
        let files = match &tls.credential_name {
            Some(name) => self.credential(
                name,
                tls.mode == TlsMode::Mutual,
                tls.ca_certificates.clone(),
            )?,
            None => Files {
                cert: tls.client_certificate.clone(),
                key: tls.private_key.clone(),
                ca: tls.ca_certificates.clone(),
            },
        };
        self.load(files)
    }

    /// The server certificate (if not the SVID) and extra trust anchors `tls` names.
    pub fn server(&self, tls: &ServerTls) -> Result<Arc<Material>> {
        let files = match &tls.credential_name {
            Some(name) => self.credential(name, true, tls.ca_certificates.clone())?,
            None => Files {
                cert: tls.server_certificate.clone(),
                key: tls.private_key.clone(),
                ca: tls.ca_certificates.clone(),
            },
        };
        self.load(files)
    }

    fn load(&self, files: Files) -> Result<Arc<Material>> {
        let stamp = stamp(&files);
        let mut cache = self.cache.lock().unwrap();
        if let Some((seen, material)) = cache.get(&files)
            && *seen == stamp
        {
            return Ok(material.clone());
        }
        match read(&files) {
            Ok(material) => {
                let material = Arc::new(material);
                if cache.contains_key(&files) {
                    tracing::info!(files = ?files, "TLS files changed; reloaded");
                }
                cache.insert(files, (stamp, material.clone()));
                Ok(material)
            }
            Err(e) => match cache.get(&files) {
                Some((_, last_good)) => {
                    tracing::warn!(files = ?files, "TLS files changed but do not load; keeping the last good ones: {e:#}");
                    Ok(last_good.clone())
                }
                None => Err(e),
            },
        }
    }

    /// The files of credential directory `name`: the pair when `with_pair`, and the CA
    /// (`ca_override` first, else `ca.crt` if present).
    fn credential(
        &self,
        name: &str,
        with_pair: bool,
        ca_override: Option<PathBuf>,
    ) -> Result<Files> {
        if name.contains('/') || name.starts_with('.') {
            bail!("credentialName {name:?} is not a plain name");
        }
        let dir = self.dir.join(name);
        if !dir.is_dir() {
            bail!("credential {name:?}: no directory {}", dir.display());
        }
        let present = |file: &str| Some(dir.join(file)).filter(|p| p.exists());
        Ok(Files {
            cert: with_pair.then(|| dir.join("tls.crt")),
            key: with_pair.then(|| dir.join("tls.key")),
            ca: ca_override.or_else(|| present("ca.crt")),
        })
    }
}

fn stamp(files: &Files) -> Stamp {
    [&files.cert, &files.key, &files.ca]
        .into_iter()
        .flatten()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

fn read(files: &Files) -> Result<Material> {
    let chain = match &files.cert {
        Some(path) => certificates(path)?,
        None => Vec::new(),
    };
    let key = match &files.key {
        Some(path) => Some(
            PrivateKeyDer::from_pem_file(path)
                .with_context(|| format!("no private key in {}", path.display()))?,
        ),
        None => None,
    };
    let roots = match &files.ca {
        Some(path) => {
            let mut store = RootCertStore::empty();
            for cert in certificates(path)? {
                store
                    .add(cert)
                    .with_context(|| format!("a CA certificate in {}", path.display()))?;
            }
            Some(Arc::new(store))
        }
        None => None,
    };
    Ok(Material { chain, key, roots })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("malformed PEM in {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}
