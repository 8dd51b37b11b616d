//! The trust bundle (all trusted roots) and the revocation list, served to node daemons.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Result;
use serde::Deserialize;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::node_auth::NodeAuth;
use crate::{
    grpc::hawser::{TrustBundle, TrustBundleRequest, trust_service_server::TrustService},
    identity::authority::Authority,
};

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
    authority: watch::Receiver<Arc<Authority>>,
    nodes: NodeAuth,
    revocations: watch::Receiver<Arc<Revocations>>,
}

impl TrustServer {
    pub fn new(
        authority: watch::Receiver<Arc<Authority>>,
        nodes: NodeAuth,
        revocations: watch::Receiver<Arc<Revocations>>,
    ) -> Self {
        Self {
            authority,
            nodes,
            revocations,
        }
    }
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
        Ok(Response::new(TrustBundle {
            trust_domain: authority.trust_domain.clone(),
            roots: authority.roots().to_vec(),
            revoked_serials: revoked.serials.clone(),
            revoked_identities: revoked.identities.clone(),
        }))
    }
}
