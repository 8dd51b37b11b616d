//! `hawser ca`: the built-in CA, serving Istio's certificate API and hawser's trust bundle
//! over gRPC with TLS.
//!
//! Callers are node daemons. Each authenticates with its node credential, a bearer token
//! issued to that node or its ServiceAccount token on Kubernetes (`node_auth`); the CA signs identity I for node N only if the
//! workload registry has a workload running as I on node N (`issuer`). The trust bundle
//! and revocation list are served to the same callers (`trust`).

pub mod issuer;
pub mod node_auth;
mod pending;
pub mod serving;
pub mod trust;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::Server;

use crate::{
    grpc::{
        hawser::trust_service_server::TrustServiceServer,
        istio::istio_certificate_service_server::IstioCertificateServiceServer,
    },
    identity::authority,
    metrics::METRICS,
    tls::configs,
    workload,
};
use hawser_model::Registry;

pub struct CaConfig {
    pub listen: SocketAddr,
    /// Where `/metrics` is served; None: nowhere.
    pub metrics_addr: Option<SocketAddr>,
    pub trust_domain: String,
    /// Istio-style plug-in material (`ca-cert.pem`, `ca-key.pem`, `cert-chain.pem`,
    /// `root-cert.pem`); without it, a self-signed root in `state_dir`.
    pub cacerts: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// Who the nodes are and what runs on them.
    pub nodes: Nodes,
    /// Revocation list YAML (`serials:`, `identities:`), followed when it changes.
    pub revocations: Option<PathBuf>,
    /// The bundle file of each trust domain this one federates with, followed.
    pub federated: Vec<(String, PathBuf)>,
    pub max_ttl: Duration,
    /// Names (DNS or IP) in the CA's own serving certificate.
    pub server_names: Vec<String>,
    pub reload_interval: Duration,
}

/// Where the CA learns which workloads run on which node, and how nodes authenticate.
pub enum Nodes {
    /// The workload YAML the node daemons read, and a `node-name: token` YAML.
    Files {
        config_dir: PathBuf,
        node_tokens: PathBuf,
    },
    /// The pods the API server schedules; ServiceAccount tokens checked by TokenReview.
    Kubernetes {
        /// The audience of the node daemons' projected tokens.
        audience: String,
        /// `namespace/name` of the node daemons' ServiceAccount.
        service_account: String,
    },
}

impl Nodes {
    async fn load(
        &self,
        reload_interval: Duration,
    ) -> Result<(watch::Receiver<Arc<Registry>>, node_auth::NodeAuth)> {
        Ok(match self {
            Nodes::Files {
                config_dir,
                node_tokens,
            } => {
                let source = workload::Source::Directory {
                    dir: config_dir.clone(),
                    interval: reload_interval,
                    // The CA reads no credential files.
                    credential_roots: None,
                };
                let tokens = node_auth::NodeTokens::load(node_tokens)?;
                (
                    workload::start(&source).await?,
                    node_auth::NodeAuth::Tokens(tokens),
                )
            }
            Nodes::Kubernetes {
                audience,
                service_account,
            } => {
                let client = kube::Client::try_default()
                    .await
                    .context("connecting to the Kubernetes API (in-cluster or kubeconfig)")?;
                let reviewer = node_auth::TokenReviewer {
                    client: client.clone(),
                    audience: audience.clone(),
                    service_account: service_account.clone(),
                    budget: Default::default(),
                };
                (
                    workload::kubernetes::follow(client).await?,
                    node_auth::NodeAuth::TokenReview(reviewer),
                )
            }
        })
    }
}

/// Runs the CA until SIGINT/SIGTERM.
pub async fn run(config: CaConfig) -> Result<()> {
    if let Some(addr) = config.metrics_addr {
        serve_metrics(addr).await?;
    }
    let ca = Ca::load(config).await?;
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

/// Serves the process's metrics (TokenReviews, among others) on `addr`.
async fn serve_metrics(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics: bind {addr} (taken? set --metrics-addr)"))?;
    let routes = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { METRICS.render() }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, routes).await {
            tracing::error!("metrics server stopped: {e}");
        }
    });
    Ok(())
}

/// How long a client has to complete its TLS handshake (a slow or silent one is closed).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP and HTTP/2 keep-alives: a peer that stopped answering is dropped.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// Connections are renewed after this (gracefully), so an idle one cannot be held forever.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(600);

/// A loaded CA, ready to serve.
pub struct Ca {
    listen: SocketAddr,
    trust_domain: String,
    issuer: issuer::Issuer,
    trust: trust::TrustServer,
    serving: Arc<serving::ServingCert>,
}

impl Ca {
    /// Loads signing material (creating a self-signed root on first start), the workload
    /// registry, node credentials and revocations.
    pub async fn load(config: CaConfig) -> Result<Self> {
        let authority = authority::follow(
            config.cacerts.as_deref(),
            &config.state_dir,
            &config.trust_domain,
            config.reload_interval,
        )
        .context("loading the CA's signing material")?;
        let (registry, nodes) = config.nodes.load(config.reload_interval).await?;
        let revocations =
            trust::follow_revocations(config.revocations.clone(), config.reload_interval)?;
        let federated = trust::follow_federated(
            config.federated,
            &config.trust_domain,
            config.reload_interval,
        )?;
        let serving = serving::follow(authority.clone(), config.server_names, configs::provider())?;
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
            trust: trust::TrustServer {
                authority,
                nodes,
                revocations,
                federated,
            },
            serving,
        })
    }

    /// Serves on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        tracing::info!(addr = %listener.local_addr()?, trust_domain = %self.trust_domain, "CA serving");
        // Anyone who reaches the CA may open connections: none may sit in a handshake, a
        // request or idle forever, and dead peers are found by keep-alives.
        let (incoming, accepting) = serving::incoming(listener, self.serving)?;
        let served = Server::builder()
            .timeout(REQUEST_TIMEOUT)
            .tcp_keepalive(Some(KEEPALIVE))
            .http2_keepalive_interval(Some(KEEPALIVE))
            .http2_keepalive_timeout(Some(HANDSHAKE_TIMEOUT))
            .max_connection_age(MAX_CONNECTION_AGE)
            .max_connection_age_grace(HANDSHAKE_TIMEOUT)
            .add_service(IstioCertificateServiceServer::new(self.issuer))
            .add_service(TrustServiceServer::new(self.trust))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        // Return only once the port is let go, so a CA started again can bind it.
        let _ = accepting.await;
        Ok(served?)
    }
}
