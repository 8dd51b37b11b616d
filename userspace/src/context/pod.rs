//! What a connection handler knows about the pod it serves, and the decisions it asks of
//! it: admission by policy (checked again while the connection lives), port settings,
//! the pod's SVID.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use hawser_model::{
    SpiffeId, Workload,
    policy::{self, Principal},
    ports::{self, PortSettings},
};
use tokio::{net::TcpStream, sync::watch};

use super::{shared::Shared, steering::Steering};

/// How long a connection waits for its pod's SVID (and the trust bundle) to arrive.
pub const SVID_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
use crate::{
    failure::{Failure, Result},
    metrics::METRICS,
    proxy::{
        live::{Admitted, Live, Ticket},
        refusal::Refusal,
        sockets,
        unauthenticated::Unauthenticated,
    },
    svid::{Svid, TrustBundle},
    tls::cache::TlsConfigs,
    tunnel::spares::Spares,
};

/// What a connection handler needs to know about the pod it serves.
pub struct PodContext {
    /// `namespace/name`.
    pub key: String,
    pub workload: Workload,
    pub identity: SpiffeId,
    /// Its connections as the kernel steers them, and sockets in its namespace.
    pub net: Arc<dyn Steering>,
    /// The ports of the daemon's own listeners in the pod: never an app's.
    pub listener_ports: Vec<u16>,
    /// The pod's SVID (None while it is fetched, or when the daemon runs without a CA).
    pub(crate) svid: Option<watch::Receiver<Option<Arc<Svid>>>>,
    /// The tunnel's TLS configurations for the current SVID and bundle.
    pub tls_configs: TlsConfigs,
    /// Inbound connections admitted and still open, checked again on every change.
    pub live: Arc<Live>,
    /// TLS handshakes in progress, capped (see `unauthenticated`).
    pub unauthenticated: Arc<Unauthenticated>,
    /// Tunnel sessions to other pods handshaken ahead of need.
    pub spares: Spares,
    pub shared: Arc<Shared>,
}

impl PodContext {
    /// Whether a connection to this pod's `port` from `principal` may go on: plaintext
    /// without a proven identity must pass PeerAuthentication, then every connection
    /// passes AuthorizationPolicy. Ok and Err both carry the reason.
    pub fn admit(&self, port: u16, principal: Option<&Principal>) -> Result<String, String> {
        let registry = self.shared.registry.borrow();
        let decision = policy::evaluate::admit(&registry.policies, &self.workload, port, principal);
        if let Err(denial) = &decision {
            let w = &self.workload;
            METRICS
                .policy_denials
                .with_label_values(&[&w.name, &w.namespace, denial.by])
                .inc();
        }
        decision.map_err(|denial| denial.to_string())
    }

    /// Whether a connection as `a` may go on now: the other side's trust domain trusted,
    /// its identity not revoked, and (for an incoming one) admitted by policy.
    fn allowed(&self, a: &Admitted) -> Result<(), Refusal> {
        if let (Some(svids), Some(Principal::Spiffe(id))) = (&self.shared.svids, &a.principal) {
            let bundle = svids.trust_bundle().borrow().clone();
            if bundle.roots_of(&id.trust_domain).is_empty() {
                let why = format!("no trust bundle for trust domain {}", id.trust_domain);
                return Err(Refusal::Untrusted(why));
            }
            bundle
                .check_revoked(a.serial.as_deref(), &id.to_string())
                .map_err(|e| Refusal::Revoked(e.to_string()))?;
        }
        if a.opened {
            return Ok(());
        }
        self.admit(a.port, a.principal.as_ref())
            .map(|_| ())
            .map_err(Refusal::Policy)
    }

    /// Admits a connection and keeps it where a later change can cut it.
    pub fn admit_live(&self, admitted: Admitted) -> Result<Ticket, Refusal> {
        self.allowed(&admitted)?;
        Ok(self.live.admit(admitted))
    }

    /// Checks the pod's open inbound connections again against the policy and the trust
    /// bundle in force now, and cuts those no longer allowed.
    pub fn recheck(&self) {
        let cut = self.live.recheck(|a| {
            self.allowed(a)
                .map_err(|refusal| format!("no longer allowed: {refusal}"))
        });
        if cut > 0 {
            tracing::info!(pod = %self.key, cut, "open connections no longer allowed were cut");
        }
    }

    /// An unconnected socket in the pod's namespace for `dst`, bound to `source` when
    /// given.
    pub fn socket(&self, dst: SocketAddr, source: Option<IpAddr>) -> Result<std::net::TcpStream> {
        let socket = self.net.outbound_socket(dst, source);
        socket.map_err(|e| Failure::io(format!("a socket in {} for {dst}", self.key), e))
    }

    /// Connects from inside the pod's namespace to `dst`.
    pub async fn connect(&self, dst: SocketAddr) -> Result<TcpStream> {
        let socket = self.socket(dst, None)?;
        sockets::connect(socket, dst, self.shared.keepalive).await
    }

    /// What `port` of this pod asks for (`InboundPorts`); the defaults when nothing does.
    pub fn port_settings(&self, port: u16) -> PortSettings {
        let registry = self.shared.registry.borrow();
        ports::settings(&registry.ports, &self.workload, port)
            .cloned()
            .unwrap_or_default()
    }

    /// The pod's SVID, when one is held.
    pub fn svid(&self) -> Option<Arc<Svid>> {
        self.svid.as_ref().and_then(|svid| svid.borrow().clone())
    }

    /// The pod's SVID and a trust bundle with roots, waiting up to `SVID_WAIT` for them:
    /// a connection made just after the pod was captured (or the daemon started) waits for
    /// its identity rather than failing.
    pub async fn credentials_soon(&self) -> Result<(Arc<Svid>, Arc<TrustBundle>)> {
        if let (Some(svid), Some(svids)) = (&self.svid, &self.shared.svids) {
            let (mut svid, mut bundle) = (svid.clone(), svids.trust_bundle());
            let held = async {
                let _ = svid.wait_for(Option::is_some).await;
                let _ = bundle.wait_for(|b| !b.roots.is_empty()).await;
            };
            if tokio::time::timeout(SVID_WAIT, held).await.is_err() {
                tracing::debug!(pod = %self.key, "no SVID or trust bundle after {SVID_WAIT:?}");
            }
        }
        self.credentials()
    }

    /// The pod's SVID and the trust bundle to check peers with, or why there are none.
    pub fn credentials(&self) -> Result<(Arc<Svid>, Arc<TrustBundle>)> {
        let (Some(svid), Some(svids)) = (&self.svid, &self.shared.svids) else {
            return Err(Failure::NotReady("the daemon runs without a CA".into()));
        };
        let svid = svid.borrow().clone();
        let svid =
            svid.ok_or_else(|| Failure::NotReady(format!("no SVID for {} yet", self.identity)))?;
        Ok((svid, svids.trust_bundle().borrow().clone()))
    }
}
