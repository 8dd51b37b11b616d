//! Enrolling one pod: its namespace set-up, its listeners and its eBPF state.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use anyhow::{Context, Result};
use hawser_common::{INBOUND_PORT, LISTENER_INBOUND, LISTENER_TUNNEL, OUTBOUND_PORT, TUNNEL_PORT};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use super::Shared;
use crate::{
    identity::SpiffeId,
    metrics::METRICS,
    netns::Netns,
    policy::{self, Principal},
    ports::{self, PortSettings},
    proxy::{inbound, outbound, sockets},
    redirect::{Dataplane, pod_routing},
    svid::{Svid, TrustBundle},
    tunnel::configs::TlsConfigs,
    workload::Workload,
};

/// What a connection handler needs to know about the pod it serves.
pub struct PodContext {
    /// `namespace/name`.
    pub key: String,
    pub workload: Workload,
    pub identity: SpiffeId,
    pub netns: Netns,
    pub netns_cookie: u64,
    pub dataplane: Arc<Dataplane>,
    /// The pod's SVID (None while it is fetched, or when the daemon runs without a CA).
    svid: Option<watch::Receiver<Option<Arc<Svid>>>>,
    /// The tunnel's TLS configurations for the current SVID and bundle.
    pub tls_configs: TlsConfigs,
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

    /// The pod's SVID and the trust bundle to check peers with, or why there are none.
    pub fn credentials(&self) -> Result<(Arc<Svid>, Arc<TrustBundle>)> {
        let (Some(svid), Some(svids)) = (&self.svid, &self.shared.svids) else {
            anyhow::bail!("the daemon runs without a CA");
        };
        let svid = svid
            .borrow()
            .clone()
            .with_context(|| format!("no SVID for {} yet", self.identity))?;
        Ok((svid, svids.trust_bundle().borrow().clone()))
    }
}

/// An enrolled pod: while this exists, the pod's TCP traffic flows through the daemon.
pub struct EnrolledPod {
    pub ctx: Arc<PodContext>,
    servers: Vec<JoinHandle<()>>,
}

/// The daemon's listeners in one pod, created inside its namespace.
struct Listeners {
    outbound: Vec<std::net::TcpListener>,
    inbound: std::net::TcpListener,
    tunnel: std::net::TcpListener,
}

impl EnrolledPod {
    pub async fn enroll(workload: Workload, shared: Arc<Shared>) -> Result<Self> {
        let path = workload
            .netns
            .as_ref()
            .context("no network namespace handed over yet")?;
        let netns = Netns::open(path)?;
        let netns_cookie = netns.cookie().await.context("read the netns cookie")?;
        netns.run(pod_routing::install).await?;
        let pod_ip = workload.pod_ip;
        let listeners = netns.run(move || open_listeners(pod_ip)).await?;
        let identity = SpiffeId::new(
            &shared.trust_domain,
            &workload.namespace,
            &workload.service_account,
        );
        let svid = shared.svids.as_ref().map(|svids| svids.acquire(&identity));
        let ctx = Arc::new(PodContext {
            key: workload.key(),
            workload,
            identity,
            netns,
            netns_cookie,
            dataplane: shared.dataplane.clone(),
            svid,
            tls_configs: TlsConfigs::default(),
            shared,
        });
        let pod = EnrolledPod {
            ctx: ctx.clone(),
            servers: Vec::new(),
        };
        // From here on, a failure leaves nothing behind: `unenroll` undoes every step.
        match pod.activate(listeners).await {
            Ok(pod) => Ok(pod),
            Err((pod, e)) => {
                pod.unenroll().await;
                Err(e)
            }
        }
    }

    /// Serves the listeners, then turns steering on (listeners first: a connection that is
    /// steered must find a listener).
    async fn activate(mut self, l: Listeners) -> Result<Self, (Self, anyhow::Error)> {
        match self.try_activate(l) {
            Ok(()) => {
                tracing::info!(pod = %self.ctx.key, ip = %self.ctx.workload.pod_ip, netns = %self.ctx.netns.path().display(), "pod enrolled");
                Ok(self)
            }
            Err(e) => Err((self, e)),
        }
    }

    fn try_activate(&mut self, l: Listeners) -> Result<()> {
        let ctx = &self.ctx;
        let ip = ctx.workload.pod_ip;
        ctx.dataplane
            .set_listener(ip, LISTENER_INBOUND, &l.inbound)?;
        ctx.dataplane.set_listener(ip, LISTENER_TUNNEL, &l.tunnel)?;
        for listener in l.outbound {
            self.servers.push(tokio::spawn(outbound::serve(
                TcpListener::from_std(listener)?,
                ctx.clone(),
            )));
        }
        self.servers.push(tokio::spawn(inbound::serve(
            TcpListener::from_std(l.inbound)?,
            ctx.clone(),
        )));
        self.servers.push(tokio::spawn(inbound::serve_tunnel(
            TcpListener::from_std(l.tunnel)?,
            ctx.clone(),
        )));
        ctx.dataplane
            .attach_sk_lookup(&ctx.netns, ctx.netns_cookie)?;
        ctx.dataplane.enroll(ctx.netns_cookie, ip)?;
        Ok(())
    }

    /// Stops steering the pod and closes its listeners. Connections already relayed run to
    /// their end.
    pub async fn unenroll(self) {
        let ctx = &self.ctx;
        ctx.dataplane
            .unenroll(ctx.netns_cookie, ctx.workload.pod_ip);
        ctx.dataplane.detach_sk_lookup(ctx.netns_cookie);
        for server in &self.servers {
            server.abort();
        }
        if let Some(svids) = &ctx.shared.svids {
            svids.release(&ctx.identity);
        }
        if let Err(e) = ctx.netns.run(pod_routing::remove).await {
            tracing::debug!(pod = %ctx.key, "remove pod routing: {e}");
        }
        tracing::info!(pod = %ctx.key, "pod unenrolled");
    }
}

fn open_listeners(pod_ip: IpAddr) -> std::io::Result<Listeners> {
    let mut outbound = vec![sockets::listener(SocketAddr::new(
        Ipv4Addr::LOCALHOST.into(),
        OUTBOUND_PORT,
    ))?];
    // connect6 sends native IPv6 connects to [::1]; a pod without IPv6 has none to send.
    match sockets::listener(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), OUTBOUND_PORT)) {
        Ok(l) => outbound.push(l),
        Err(e) => tracing::debug!("no IPv6 outbound listener: {e}"),
    }
    let loopback: IpAddr = match pod_ip {
        IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
    };
    Ok(Listeners {
        outbound,
        // sk_lookup hands it connections for any port, whatever address it is bound to.
        inbound: sockets::listener(SocketAddr::new(loopback, INBOUND_PORT))?,
        tunnel: sockets::listener(SocketAddr::new(pod_ip, TUNNEL_PORT))?,
    })
}
