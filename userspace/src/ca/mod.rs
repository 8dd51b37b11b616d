//! `hawser ca`: the built-in CA, serving Istio's certificate API and hawser's trust bundle
//! over gRPC with TLS.
//!
//! Callers are node daemons. Each authenticates with its node credential, a bearer token
//! issued to that node (`node_auth`); the CA signs identity I for node N only if the
//! workload registry has a workload running as I on node N (`issuer`). The trust bundle
//! and revocation list are served to the same callers (`trust`).

pub mod issuer;
pub mod node_auth;
pub mod trust;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::{
    grpc::{
        hawser::trust_service_server::TrustServiceServer,
        istio::istio_certificate_service_server::IstioCertificateServiceServer,
    },
    identity::authority::Authority,
    workload,
};

pub struct CaConfig {
    pub listen: SocketAddr,
    pub trust_domain: String,
    /// Istio-style plug-in material (`ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`,
    /// `root-cert.pem`); without it, a self-signed root in `state_dir`.
    pub cacerts: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// Workload registry (the same YAML the node daemons read).
    pub config_dir: PathBuf,
    /// `node-name: token` YAML of node credentials.
    pub node_tokens: PathBuf,
    /// Revocation list YAML (`serials:`, `identities:`), followed when it changes.
    pub revocations: Option<PathBuf>,
    pub max_ttl: Duration,
    /// Names (DNS or IP) in the CA's own serving certificate.
    pub server_names: Vec<String>,
    pub reload_interval: Duration,
}

/// Runs the CA until SIGINT/SIGTERM.
pub async fn run(config: CaConfig) -> Result<()> {
    let ca = Ca::load(config)?;
    let listener = TcpListener::bind(ca.listen)
        .await
        .with_context(|| format!("listen on {}", ca.listen))?;
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
    };
    ca.serve(listener, shutdown).await
}

/// A loaded CA, ready to serve.
pub struct Ca {
    listen: SocketAddr,
    trust_domain: String,
    issuer: issuer::Issuer,
    trust: trust::TrustServer,
    tls: Identity,
}

impl Ca {
    /// Loads signing material (creating a self-signed root on first start), the workload
    /// registry, node credentials and revocations. Needs a tokio runtime (for reloads).
    pub fn load(config: CaConfig) -> Result<Self> {
        let authority = Arc::new(
            Authority::load(
                config.cacerts.as_deref(),
                &config.state_dir,
                &config.trust_domain,
            )
            .context("loading the CA's signing material")?,
        );
        let registry = workload::follow(config.config_dir.clone(), config.reload_interval)
            .with_context(|| format!("reading workloads from {}", config.config_dir.display()))?;
        let nodes = node_auth::NodeTokens::load(&config.node_tokens)?;
        let revocations =
            trust::follow_revocations(config.revocations.clone(), config.reload_interval)?;
        let (chain, key) = authority
            .server_certificate(&config.server_names, Duration::from_secs(365 * 24 * 3600))?;
        Ok(Self {
            listen: config.listen,
            trust_domain: config.trust_domain,
            issuer: issuer::Issuer::new(
                authority.clone(),
                registry,
                nodes.clone(),
                revocations.clone(),
                config.max_ttl,
            ),
            trust: trust::TrustServer::new(authority, nodes, revocations),
            tls: Identity::from_pem(chain, key),
        })
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        tracing::info!(addr = %listener.local_addr()?, trust_domain = %self.trust_domain, "CA serving");
        Server::builder()
            .tls_config(ServerTlsConfig::new().identity(self.tls))?
            .add_service(IstioCertificateServiceServer::new(self.issuer))
            .add_service(TrustServiceServer::new(self.trust))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await?;
        Ok(())
    }
}
