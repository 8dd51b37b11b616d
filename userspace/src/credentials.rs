//! Certificates, keys and CA bundles from files: client material for originated TLS (named
//! in a `DestinationRule`), server material and extra trust anchors for inbound TLS
//! (`InboundPorts`); or from a credential directory (`tls.crt`, `tls.key`, `ca.crt`, the
//! layout of a mounted Secret) of the resource's own namespace.
//!
//! Tenants write those resources, the daemon reads the files: a file path is read only
//! under the roots the operator allows (`--credential-roots`, after resolving symlinks),
//! and a credential only from `<credentials-dir>/<namespace>/<name>/`.
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

use crate::failure::{Failure, Result};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use hawser_model::{
    egress::{ClientTls, TlsMode},
    ports::ServerTls,
};

/// The only directories certificate and key file paths may point into
/// (`--credential-roots`); none: no file paths at all.
#[derive(Clone, Debug, Default)]
pub struct CredentialRoots(Vec<PathBuf>);

impl CredentialRoots {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Self(roots)
    }

    /// `path` with symlinks resolved, if that is under a root.
    pub fn resolve(&self, path: &Path) -> Result<PathBuf> {
        let real = path
            .canonicalize()
            .map_err(|e| unusable(format!("read {}: {e}", path.display())))?;
        let inside = self
            .0
            .iter()
            .any(|root| root.canonicalize().is_ok_and(|root| real.starts_with(root)));
        match inside {
            true => Ok(real),
            false => Err(unusable(self.outside(path))),
        }
    }

    /// Whether a resource may name `path`, judged when the resource is loaded: as
    /// `resolve` does when the file exists; by the path as written (absolute, no `..`)
    /// when it does not yet. Reading it is checked again.
    pub fn admits(&self, path: &Path) -> Result<(), String> {
        if path.exists() {
            return self.resolve(path).map(drop).map_err(|e| e.to_string());
        }
        let plain = path.is_absolute()
            && !path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
        match plain && self.0.iter().any(|root| path.starts_with(root)) {
            true => Ok(()),
            false => Err(self.outside(path)),
        }
    }

    fn outside(&self, path: &Path) -> String {
        let roots: Vec<String> = self.0.iter().map(|r| r.display().to_string()).collect();
        let roots = match roots.is_empty() {
            true => "is not set".into(),
            false => roots.join(","),
        };
        format!(
            "{} is outside the directories the operator allows (--credential-roots {roots})",
            path.display()
        )
    }
}

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
    /// Where `credentialName` directories live, one directory per namespace.
    dir: PathBuf,
    roots: CredentialRoots,
    cache: Mutex<HashMap<Files, (Stamp, Arc<Material>)>>,
}

impl Credentials {
    pub fn new(dir: PathBuf, roots: CredentialRoots) -> Self {
        Self {
            dir,
            roots,
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
            None => self.allowed(Files {
                cert: tls.client_certificate.clone(),
                key: tls.private_key.clone(),
                ca: tls.ca_certificates.clone(),
            })?,
        };
        self.load(files)
    }

    /// The server certificate (if not the SVID) and extra trust anchors `tls` names.
    pub fn server(&self, tls: &ServerTls) -> Result<Arc<Material>> {
        let files = match &tls.credential_name {
            Some(name) => self.credential(name, true, tls.ca_certificates.clone())?,
            None => self.allowed(Files {
                cert: tls.server_certificate.clone(),
                key: tls.private_key.clone(),
                ca: tls.ca_certificates.clone(),
            })?,
        };
        self.load(files)
    }

    /// `files`, resolved, if every one is under an allowed root once symlinks are resolved
    /// (a Secret's `..data` link stays inside its mount; a link out of it does not pass).
    /// The resolved paths are what is read, so a link swapped after the check is not.
    fn allowed(&self, files: Files) -> Result<Files> {
        let resolve = |path: Option<PathBuf>| -> Result<Option<PathBuf>> {
            path.map(|p| self.roots.resolve(&p)).transpose()
        };
        Ok(Files {
            cert: resolve(files.cert)?,
            key: resolve(files.key)?,
            ca: resolve(files.ca)?,
        })
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
                    tracing::warn!(files = ?files, "TLS files changed but do not load; keeping the last good ones: {e}");
                    Ok(last_good.clone())
                }
                None => Err(e),
            },
        }
    }

    /// The files of credential directory `scoped` (`<namespace>/<name>`): the pair when
    /// `with_pair`, and the CA (`ca_override` first, else `ca.crt` if present).
    fn credential(
        &self,
        scoped: &str,
        with_pair: bool,
        ca_override: Option<PathBuf>,
    ) -> Result<Files> {
        let plain = |part: &str| !part.is_empty() && !part.starts_with('.');
        match scoped.split_once('/') {
            Some((namespace, name)) if plain(namespace) && plain(name) && !name.contains('/') => {}
            _ => {
                return Err(unusable(format!(
                    "credential {scoped:?} is not <namespace>/<name>"
                )));
            }
        }
        let ca_override = match ca_override {
            Some(ca) => {
                self.allowed(Files {
                    cert: None,
                    key: None,
                    ca: Some(ca),
                })?
                .ca
            }
            None => None,
        };
        let name = scoped;
        let dir = self.dir.join(scoped);
        if !dir.is_dir() {
            return Err(unusable(format!(
                "credential {name:?}: no directory {}",
                dir.display()
            )));
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
                .map_err(|e| unusable(format!("no private key in {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let roots = match &files.ca {
        Some(path) => {
            let mut store = RootCertStore::empty();
            for cert in certificates(path)? {
                store.add(cert).map_err(|e| {
                    unusable(format!("a CA certificate in {}: {e}", path.display()))
                })?;
            }
            Some(Arc::new(store))
        }
        None => None,
    };
    Ok(Material { chain, key, roots })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unusable(format!("read {}: {e}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(format!("malformed PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(unusable(format!("no certificate in {}", path.display())));
    }
    Ok(certs)
}

fn unusable(why: String) -> Failure {
    Failure::Credentials(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key in `dir`.
    fn pair(dir: &Path) -> (PathBuf, PathBuf) {
        let made = rcgen::generate_simple_self_signed(vec!["client.example".into()]).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    fn mutual(cert: PathBuf, key: PathBuf) -> ClientTls {
        ClientTls {
            mode: TlsMode::Mutual,
            client_certificate: Some(cert),
            private_key: Some(key),
            ca_certificates: None,
            credential_name: None,
            sni: None,
            subject_alt_names: Vec::new(),
        }
    }

    #[test]
    fn file_paths_are_read_only_under_the_roots_the_operator_allows() {
        let (allowed, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (cert, key) = pair(allowed.path());
        let (other_cert, other_key) = pair(elsewhere.path());
        let credentials = Credentials::new(
            allowed.path().join("none"),
            CredentialRoots::new(vec![allowed.path().into()]),
        );
        assert!(
            credentials
                .client(&mutual(cert.clone(), key.clone()))
                .is_ok()
        );
        let refused = credentials
            .client(&mutual(other_cert, other_key.clone()))
            .err()
            .unwrap();
        assert!(
            refused.to_string().contains("--credential-roots"),
            "{refused:#}"
        );
        // A link inside the root to a key outside it is outside.
        let link = allowed.path().join("sneaky.key");
        std::os::unix::fs::symlink(&other_key, &link).unwrap();
        assert!(credentials.client(&mutual(cert.clone(), link)).is_err());
        // No roots: no file paths at all.
        let closed = Credentials::new(allowed.path().join("none"), CredentialRoots::default());
        let refused = closed.client(&mutual(cert, key)).err().unwrap();
        assert!(refused.to_string().contains("is not set"), "{refused:#}");
    }

    #[test]
    fn a_credential_is_found_only_in_the_namespace_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let shop = dir.path().join("shop/billing");
        std::fs::create_dir_all(&shop).unwrap();
        pair(&shop);
        let credentials = Credentials::new(dir.path().into(), CredentialRoots::default());
        let named = |scoped: &str| ClientTls {
            credential_name: Some(scoped.into()),
            ..mutual(PathBuf::new(), PathBuf::new())
        };
        assert!(credentials.client(&named("shop/billing")).is_ok());
        assert!(credentials.client(&named("other/billing")).is_err());
        for sneaky in [
            "billing",
            "shop/../shop/billing",
            "../shop/billing",
            "shop/.x",
        ] {
            assert!(credentials.client(&named(sneaky)).is_err(), "{sneaky}");
        }
        let scoped = hawser_model::policy::istio::scoped_credential;
        assert_eq!(scoped("shop", "billing").unwrap(), "shop/billing");
        for bad in ["../billing", "other/billing", ".hidden", "", "Billing"] {
            assert!(scoped("shop", bad).is_err(), "{bad}");
        }
    }
}
