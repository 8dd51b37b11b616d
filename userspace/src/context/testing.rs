//! A pod for tests of the connection handlers, in-process: steering and sockets faked
//! (no eBPF, no namespace, no root), everything else the daemon's own.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hawser_model::{Registry, SpiffeId, Workload, egress::OutboundPolicy};
use tokio::sync::watch;

use super::{
    drain::Drain,
    pod::PodContext,
    shared::Shared,
    steering::{DeliveryPort, Steering},
};
use crate::{
    credentials::{CredentialRoots, Credentials},
    failure::Failure,
    proxy::sockets::{self, Keepalive},
    tls::{cache::TlsConfigs, offload::Offload},
};

/// Steering as a test sets it up, by the client's address: the original destinations of
/// outbound connections, the dialed addresses of steered inbound ones (others count as
/// dialed at the listener); and the deliveries announced.
#[derive(Default)]
pub struct FakeSteering {
    pub original: Mutex<HashMap<SocketAddr, SocketAddr>>,
    pub dialed: Mutex<HashMap<SocketAddr, SocketAddr>>,
    pub announced: Mutex<Vec<(SocketAddr, SocketAddr)>>,
    /// How many announces to refuse next, as if another delivery held their pass.
    pub passes_held: AtomicUsize,
    pub forgotten: Mutex<Vec<(SocketAddr, SocketAddr)>>,
}

impl Steering for FakeSteering {
    fn original_dst(&self, peer: SocketAddr) -> Option<SocketAddr> {
        self.original.lock().unwrap().remove(&peer)
    }

    fn dialed(&self, _local: SocketAddr, peer: SocketAddr) -> Option<SocketAddr> {
        self.dialed.lock().unwrap().remove(&peer)
    }

    fn outbound_socket(
        &self,
        dst: SocketAddr,
        source: Option<IpAddr>,
    ) -> io::Result<std::net::TcpStream> {
        sockets::outbound(dst, source)
    }

    /// Bound to the client's (loopback) address without IP_TRANSPARENT (root): each on a
    /// port of its own, as in a pod.
    fn delivery_socket(
        &self,
        client: SocketAddr,
        _port: DeliveryPort,
    ) -> io::Result<std::net::TcpStream> {
        sockets::outbound(client, Some(client.ip()))
    }

    fn announce_delivery(
        &self,
        bound: SocketAddr,
        dst: SocketAddr,
        _lifetime: Duration,
    ) -> Result<bool, Failure> {
        self.announced.lock().unwrap().push((bound, dst));
        let held = self
            .passes_held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        Ok(held.is_err())
    }

    fn forget_delivery(&self, bound: SocketAddr, dst: SocketAddr) {
        self.forgotten.lock().unwrap().push((bound, dst));
    }
}

/// Pod `a` of `registry` (which must declare `default/a`), on a node without a CA.
pub fn pod(
    registry: Registry,
    outbound_policy: OutboundPolicy,
    net: Arc<FakeSteering>,
) -> Arc<PodContext> {
    let workload: Workload = registry.workloads["default/a"].clone();
    let shared = Arc::new(Shared {
        node_name: workload.node_name.clone(),
        svids: None,
        trust_domain: "cluster.local".into(),
        registry: watch::channel(Arc::new(registry)).1,
        offload: Offload::userspace(u64::MAX),
        serial_tunnels: false,
        credentials: Credentials::new("/nonexistent".into(), CredentialRoots::default()),
        outbound_policy,
        resolved: watch::channel(Arc::default()).1,
        originated: Arc::default(),
        keepalive: Keepalive {
            idle: Duration::from_secs(60),
        },
        drain: Drain::new(tokio::runtime::Handle::current()),
        handoff: Default::default(),
    });
    Arc::new(PodContext {
        key: workload.key(),
        identity: SpiffeId::new("cluster.local", "default", &workload.service_account),
        workload,
        net,
        listener_ports: Vec::new(),
        svid: None,
        tls_configs: TlsConfigs::default(),
        live: Arc::default(),
        unauthenticated: Arc::default(),
        spares: Default::default(),
        shared,
    })
}
