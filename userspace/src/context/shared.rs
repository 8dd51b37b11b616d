//! What every enrolled pod's connection handlers share: the node's registry snapshot,
//! identities, eBPF handle, TLS offload, credentials and settings.

use std::sync::Arc;

use hawser_model::{
    Registry, SpiffeId, Workload,
    egress::{OutboundPolicy, Resolved},
    route::{self, Route},
};
use tokio::sync::watch;

use super::{drain::Drain, handoff::Handoff};
use crate::{
    credentials::Credentials,
    proxy::{same_node::Originated, sockets::Keepalive},
    svid::SvidManager,
    tls::offload::Offload,
};

/// What every pod's enrollment shares.
pub struct Shared {
    pub node_name: String,
    pub svids: Option<Arc<SvidManager>>,
    pub trust_domain: String,
    pub registry: tokio::sync::watch::Receiver<Arc<Registry>>,
    pub offload: Offload,
    /// Tunnel sessions this node opens carry its pods' connections one after another
    /// (`--tunnel-reuse`, where they stay in userspace; see `tunnel::spares`).
    pub serial_tunnels: bool,
    /// Certificates from files: for originated TLS, and for inbound ports' TLS.
    pub credentials: Credentials,
    pub outbound_policy: OutboundPolicy,
    /// Addresses of the names of `resolution: DNS` ServiceEntries.
    pub resolved: watch::Receiver<Arc<Resolved>>,
    /// Same-node connections the daemon opened, the only proof of a same-node caller.
    pub originated: Arc<Originated>,
    pub keepalive: Keepalive,
    /// Every relayed connection, for a shutdown that lets them finish.
    pub drain: Drain,
    /// Kernel-TLS connections passed on to a successor daemon.
    pub handoff: Arc<Handoff>,
}

impl Shared {
    /// The identity the registry gives an enrolled pod of this node at `ip`: where the
    /// daemon sends a connection, never proof of who sent one.
    pub fn local_workload_identity(&self, ip: std::net::IpAddr) -> Option<SpiffeId> {
        let registry = self.registry.borrow();
        let w = registry
            .by_ip(ip)
            .filter(|w| w.node_name == self.node_name)?;
        Some(w.identity(&self.trust_domain))
    }

    /// Where a connection `client` dialed to `dst` goes (`hawser_model::route`).
    pub fn route(&self, client: &Workload, dst: std::net::SocketAddr) -> Route {
        let node = route::Node {
            name: &self.node_name,
            trust_domain: &self.trust_domain,
            identities: self.svids.is_some(),
            outbound_policy: self.outbound_policy,
        };
        route::route(
            &self.registry.borrow(),
            &node,
            client,
            dst,
            &self.resolved.borrow(),
        )
    }
}
