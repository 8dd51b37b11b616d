//! The trust bundle (all trusted roots), the revocation list and the roots of federated
//! trust domains, served to node daemons.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Result, bail};
use serde::Deserialize;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::node_auth::NodeAuth;
use crate::{
    grpc::hawser::{
        FederatedBundle, TrustBundle, TrustBundleRequest, trust_service_server::TrustService,
    },
    identity::{authority::Authority, spiffe_bundle},
};

/// The roots of each federated trust domain whose bundle file is present.
pub type Federated = BTreeMap<String, Vec<String>>;

/// Follows the bundle file of each federated trust domain (SPIFFE bundle or PEM). A file
/// that is absent withdraws its domain, and so does one that holds no valid roots (an
/// error is logged): trust is never kept past a change that meant to end it. A file that
/// cannot be read at all keeps the last good set (a permission or I/O error says nothing
/// of what to trust).
pub fn follow_federated(
    files: Vec<(String, PathBuf)>,
    own: &str,
    interval: Duration,
) -> Result<watch::Receiver<Arc<Federated>>> {
    if let Some((domain, _)) = files.iter().find(|(domain, _)| domain == own) {
        bail!("--federated-bundle names {domain}, the CA's own trust domain");
    }
    let watched: Vec<PathBuf> = files.iter().map(|(_, path)| path.clone()).collect();
    let rx = crate::reload::follow(
        "federated trust bundles",
        move || watched.clone(),
        move || load_federated(&files),
        interval,
    )
    .map_err(anyhow::Error::msg)?;
    Ok(rx)
}

fn load_federated(files: &[(String, PathBuf)]) -> Result<Federated, String> {
    let mut federated = Federated::new();
    for (domain, path) in files {
        let file = path.display();
        let roots = match std::fs::read_to_string(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(%domain, %file, "no bundle: the trust domain is not trusted");
                continue;
            }
            // Unreadable now (permissions, I/O): the last good set stays.
            Err(e) => return Err(format!("{file}: {e}")),
            Ok(text) => spiffe_bundle::roots(&text),
        };
        match roots {
            Ok(roots) => {
                federated.insert(domain.clone(), roots);
            }
            Err(e) => {
                tracing::error!(%domain, %file, "bundle refused, the trust domain is not trusted: {e:#}")
            }
        }
    }
    Ok(federated)
}

/// The revocation list file: certificate serials (hex) and whole identities.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocations {
    #[serde(default)]
    pub serials: Vec<String>,
    #[serde(default)]
    pub identities: Vec<String>,
}

impl Revocations {
    pub fn revokes_identity(&self, id: &str) -> bool {
        self.identities.iter().any(|i| i == id)
    }
}

/// Follows the revocation file (an absent file means nothing is revoked).
pub fn follow_revocations(
    path: Option<PathBuf>,
    interval: Duration,
) -> Result<watch::Receiver<Arc<Revocations>>> {
    let Some(path) = path else {
        return Ok(watch::channel(Arc::new(Revocations::default())).1);
    };
    let watched = path.clone();
    let rx = crate::reload::follow(
        "revocation list",
        move || vec![watched.clone()],
        move || load(&path),
        interval,
    )
    .map_err(anyhow::Error::msg)?;
    Ok(rx)
}

fn load(path: &std::path::Path) -> Result<Revocations, String> {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Revocations::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
        Ok(text) if text.trim().is_empty() => Ok(Revocations::default()),
        Ok(text) => {
            let mut r: Revocations =
                serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            for serial in &mut r.serials {
                *serial = serial.to_ascii_lowercase().replace(':', "");
            }
            Ok(r)
        }
    }
}

pub struct TrustServer {
    pub authority: watch::Receiver<Arc<Authority>>,
    pub nodes: NodeAuth,
    pub revocations: watch::Receiver<Arc<Revocations>>,
    pub federated: watch::Receiver<Arc<Federated>>,
}

#[tonic::async_trait]
impl TrustService for TrustServer {
    async fn get_trust_bundle(
        &self,
        request: Request<TrustBundleRequest>,
    ) -> Result<Response<TrustBundle>, Status> {
        self.nodes.authenticate(&request).await?;
        let revoked = self.revocations.borrow().clone();
        let authority = self.authority.borrow().clone();
        let federated = self.federated.borrow().clone();
        Ok(Response::new(TrustBundle {
            trust_domain: authority.trust_domain.clone(),
            roots: authority.roots().to_vec(),
            revoked_serials: revoked.serials.clone(),
            revoked_identities: revoked.identities.clone(),
            federated: federated
                .iter()
                .map(|(domain, roots)| FederatedBundle {
                    trust_domain: domain.clone(),
                    roots: roots.clone(),
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    /// Trust ends with any change meant to end it; only a file that cannot be read at all
    /// says nothing, and keeps the last good set.
    #[test]
    fn a_bundle_absent_or_without_roots_withdraws_its_domain_and_an_unreadable_one_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| dir.path().join(name);
        std::fs::write(file("good.pem"), root_pem()).unwrap();
        std::fs::write(file("empty.json"), "").unwrap();
        std::fs::write(file("bad.json"), "{\"keys\": [{\"use\": \"x509-svid\"").unwrap();
        let files = |pairs: &[(&str, &str)]| -> Vec<(String, PathBuf)> {
            pairs
                .iter()
                .map(|(d, f)| (d.to_string(), file(f)))
                .collect()
        };
        let loaded = load_federated(&files(&[
            ("good", "good.pem"),
            ("absent", "absent.json"),
            ("empty", "empty.json"),
            ("bad", "bad.json"),
        ]))
        .unwrap();
        assert_eq!(loaded.keys().collect::<Vec<_>>(), ["good"]);
        // A directory in place of the file: unreadable, an error (the last good set stays).
        std::fs::create_dir(file("dir.json")).unwrap();
        assert!(load_federated(&files(&[("dir", "dir.json")])).is_err());
    }
}
