//! `CreateCertificate`: authenticate the node, check the CSR, authorize the identity
//! against the workload registry, sign. Every decision leaves an audit line.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::{node_auth::NodeAuth, trust::Revocations};
use crate::{
    grpc::istio::{
        IstioCertificateRequest, IstioCertificateResponse,
        istio_certificate_service_server::IstioCertificateService,
    },
    identity::{authority::Authority, certs},
};
use hawser_model::{Registry, SpiffeId};

pub struct Issuer {
    /// The signing material in force (followed from its files).
    authority: watch::Receiver<Arc<Authority>>,
    registry: watch::Receiver<Arc<Registry>>,
    nodes: NodeAuth,
    revocations: watch::Receiver<Arc<Revocations>>,
    max_ttl: Duration,
}

impl Issuer {
    pub fn new(
        authority: watch::Receiver<Arc<Authority>>,
        registry: watch::Receiver<Arc<Registry>>,
        nodes: NodeAuth,
        revocations: watch::Receiver<Arc<Revocations>>,
        max_ttl: Duration,
    ) -> Self {
        Self {
            authority,
            registry,
            nodes,
            revocations,
            max_ttl,
        }
    }

    fn issue(
        &self,
        node: &str,
        request: &IstioCertificateRequest,
    ) -> Result<(SpiffeId, Vec<String>), Status> {
        // One version of the material for the checks and the signature.
        let authority = self.authority.borrow().clone();
        let (id, _) = authority
            .check_csr(&request.csr)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if self.revocations.borrow().revokes_identity(&id.to_string()) {
            return Err(Status::permission_denied(format!("{id} is revoked")));
        }
        let hosted = self
            .registry
            .borrow()
            .hosts(node, &id, &authority.trust_domain);
        if !hosted {
            return Err(Status::permission_denied(format!(
                "node {node} runs no workload as {id}"
            )));
        }
        authority
            .sign_csr(&request.csr, self.ttl(request.validity_duration))
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    /// The requested lifetime, capped by the CA's maximum; none requested means the maximum.
    fn ttl(&self, requested_secs: i64) -> Duration {
        match u64::try_from(requested_secs) {
            Ok(secs) if secs > 0 => Duration::from_secs(secs).min(self.max_ttl),
            _ => self.max_ttl,
        }
    }
}

#[tonic::async_trait]
impl IstioCertificateService for Issuer {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let node = match self.nodes.authenticate(&request).await {
            Ok(node) => node,
            Err(status) => {
                tracing::warn!(target: "hawser::audit", %peer, decision = "refused", reason = status.message(), "certificate request");
                return Err(status);
            }
        };
        match self.issue(&node, request.get_ref()) {
            Ok((id, chain)) => {
                let leaf = certs::info(&chain[0]).map_err(|e| Status::internal(e.to_string()))?;
                tracing::info!(target: "hawser::audit", %peer, node, identity = %id, decision = "issued",
                    serial = leaf.serial, not_after = %leaf.not_after, "certificate request");
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain: chain,
                }))
            }
            Err(status) => {
                tracing::warn!(target: "hawser::audit", %peer, node, decision = "refused", code = ?status.code(),
                    reason = status.message(), "certificate request");
                Err(status)
            }
        }
    }
}
