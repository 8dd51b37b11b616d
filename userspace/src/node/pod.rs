//! Enrolling one pod: its namespace set-up, its listeners and its eBPF state.

use std::sync::Arc;

use anyhow::{Context, Result};
use hawser_common::{LISTENER_INBOUND, LISTENER_OUTBOUND, LISTENER_TUNNEL};
use tokio::task::JoinHandle;

use crate::{
    context::{pod::PodContext, shared::Shared},
    netns::Netns,
    proxy::{
        inbound, outbound,
        sockets::{self, Keepalive},
    },
    redirect::{Dataplane, captured::Captured, pod_routing},
    tls::cache::TlsConfigs,
};
use hawser_model::Workload;

/// An enrolled pod: while this exists, the pod's TCP traffic flows through the daemon.
pub struct EnrolledPod {
    pub ctx: Arc<PodContext>,
    /// Its namespace and eBPF state.
    captured: Arc<Captured>,
    servers: Vec<JoinHandle<()>>,
}

/// An enrollment that failed. When the pod's namespace could be captured first
/// (`netns_cookie`), the pod stays closed: its connects and inbound connections are
/// refused until an enrollment succeeds or the pod leaves the workload source.
pub struct Failed {
    pub netns_cookie: Option<u64>,
    pub error: anyhow::Error,
}

/// The daemon's listeners in one pod, created inside its namespace. Their addresses do not
/// matter (sk_lookup steers to them by netns and kind), so they take free ports on
/// loopback: nothing the pod binds first can make enrollment fail.
struct Listeners {
    outbound: std::net::TcpListener,
    inbound: std::net::TcpListener,
    tunnel: std::net::TcpListener,
}

impl EnrolledPod {
    pub async fn enroll(
        workload: Workload,
        shared: Arc<Shared>,
        dataplane: &Arc<Dataplane>,
    ) -> Result<Self, Failed> {
        let fail = |netns_cookie, error| Failed {
            netns_cookie,
            error,
        };
        let path = workload.netns.clone().ok_or_else(|| {
            fail(
                None,
                anyhow::anyhow!("no network namespace handed over yet"),
            )
        })?;
        let netns = Netns::open(&path).map_err(|e| fail(None, e.into()))?;
        let netns_cookie = netns
            .cookie()
            .context("read the netns cookie")
            .map_err(|e| fail(None, e))?;
        // Closed first: from here on, whatever fails, the pod's traffic goes to the daemon
        // or nowhere.
        close(dataplane, &netns, netns_cookie).map_err(|e| fail(None, e))?;
        let opened = async {
            netns.run(pod_routing::install).await?;
            let keepalive = shared.keepalive;
            let listeners = netns.run(move || open_listeners(keepalive)).await;
            listeners.map_err(anyhow::Error::from)
        };
        let listeners = opened.await.map_err(|e| fail(Some(netns_cookie), e))?;
        // A local workload declaring another trust domain is refused its SVID by the CA
        // (the CA signs only its own): it stays captured without an identity.
        let identity = workload.identity(&shared.trust_domain);
        let svid = shared.svids.as_ref().map(|svids| svids.acquire(&identity));
        let captured = Arc::new(Captured {
            dataplane: dataplane.clone(),
            netns,
            netns_cookie,
        });
        let ctx = Arc::new(PodContext {
            key: workload.key(),
            workload,
            identity,
            net: captured.clone(),
            listener_ports: listeners.ports(),
            svid,
            tls_configs: TlsConfigs::default(),
            live: Arc::default(),
            unauthenticated: Arc::default(),
            spares: Default::default(),
            shared,
        });
        let mut pod = EnrolledPod {
            ctx,
            captured,
            servers: Vec::new(),
        };
        match pod.serve(listeners) {
            Ok(()) => {
                let ctx = &pod.ctx;
                let netns = pod.captured.netns.path().display();
                tracing::info!(pod = %ctx.key, ips = %ctx.workload.ips_text(), %netns, "pod enrolled");
                Ok(pod)
            }
            Err(e) => {
                pod.stop();
                Err(fail(Some(netns_cookie), e))
            }
        }
    }

    /// Serves the listeners, then registers them for steering (a connection that is
    /// steered must find a listener).
    fn serve(&mut self, l: Listeners) -> Result<()> {
        let (ctx, captured) = (&self.ctx, &self.captured);
        let cookie = captured.netns_cookie;
        for (kind, listener) in [
            (LISTENER_OUTBOUND, &l.outbound),
            (LISTENER_INBOUND, &l.inbound),
            (LISTENER_TUNNEL, &l.tunnel),
        ] {
            captured.dataplane.set_listener(cookie, kind, listener)?;
        }
        let data = &ctx.shared.drain;
        let (outbound, inbound, tunnel) = (
            data.listener(l.outbound)?,
            data.listener(l.inbound)?,
            data.listener(l.tunnel)?,
        );
        self.servers.extend([
            data.serve(outbound::serve(outbound, ctx.clone())),
            data.serve(inbound::serve(inbound, ctx.clone())),
            data.serve(inbound::serve_tunnel(tunnel, ctx.clone())),
        ]);
        Ok(())
    }

    /// Closes the listeners and lets go of the SVID. The pod stays captured: with no
    /// listener its connections are refused. Connections already relayed run to their end.
    fn stop(&self) {
        self.stop_accepting();
        if let Some(svids) = &self.ctx.shared.svids {
            svids.release(&self.ctx.identity);
        }
    }

    /// The cookie of the pod's network namespace, which keys its eBPF state.
    pub fn netns_cookie(&self) -> u64 {
        self.captured.netns_cookie
    }

    /// Closes the pod's listeners; connections already accepted run on (see `drain`).
    pub fn stop_accepting(&self) {
        for server in &self.servers {
            server.abort();
        }
    }

    /// Stops serving the pod but keeps it captured, for an enrollment that replaces this
    /// one (the workload changed): no moment lets its traffic around the daemon.
    pub fn retire(self) {
        self.stop();
        tracing::info!(pod = %self.ctx.key, "pod enrollment replaced");
    }

    /// Releases the pod, which left the workload source: its traffic no longer goes
    /// through the daemon.
    pub async fn unenroll(self) {
        self.stop();
        let (key, captured) = (&self.ctx.key, &self.captured);
        captured.dataplane.unenroll(captured.netns_cookie);
        if let Err(e) = captured.netns.run(pod_routing::remove).await {
            tracing::debug!(pod = %key, "remove pod routing: {e}");
        }
        tracing::info!(pod = %key, "pod unenrolled");
    }
}

/// Captures the pod with nowhere to go yet: connects are steered to listeners that do
/// not exist, so they are refused, as are connections arriving from the network.
fn close(dataplane: &Dataplane, netns: &Netns, netns_cookie: u64) -> Result<()> {
    dataplane.attach_steering(netns, netns_cookie)?;
    dataplane.enroll(netns_cookie)
}

impl Listeners {
    fn ports(&self) -> Vec<u16> {
        [&self.outbound, &self.inbound, &self.tunnel]
            .iter()
            .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
            .collect()
    }
}

fn open_listeners(keepalive: Keepalive) -> std::io::Result<Listeners> {
    Ok(Listeners {
        outbound: sockets::steered_listener(keepalive)?,
        inbound: sockets::steered_listener(keepalive)?,
        tunnel: sockets::steered_listener(keepalive)?,
    })
}
