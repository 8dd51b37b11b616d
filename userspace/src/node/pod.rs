//! Enrolling one pod: its namespace set-up, its listeners and its eBPF state.

use std::sync::Arc;

use anyhow::{Context, Result};
use hawser_common::{LISTENER_INBOUND, LISTENER_OUTBOUND, LISTENER_TUNNEL};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    context::{pod::PodContext, shared::Shared},
    netns::Netns,
    proxy::{inbound, outbound, sockets},
    redirect::{Dataplane, pod_routing},
    tunnel::configs::TlsConfigs,
};
use hawser_model::{SpiffeId, Workload};

/// An enrolled pod: while this exists, the pod's TCP traffic flows through the daemon.
pub struct EnrolledPod {
    pub ctx: Arc<PodContext>,
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
    pub async fn enroll(workload: Workload, shared: Arc<Shared>) -> Result<Self, Failed> {
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
            .await
            .context("read the netns cookie")
            .map_err(|e| fail(None, e))?;
        // Closed first: from here on, whatever fails, the pod's traffic goes to the daemon
        // or nowhere.
        close(&shared.dataplane, &netns, netns_cookie).map_err(|e| fail(None, e))?;
        let opened = async {
            netns.run(pod_routing::install).await?;
            netns.run(open_listeners).await.map_err(anyhow::Error::from)
        };
        let listeners = opened.await.map_err(|e| fail(Some(netns_cookie), e))?;
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
            listener_ports: listeners.ports(),
            dataplane: shared.dataplane.clone(),
            svid,
            tls_configs: TlsConfigs::default(),
            live: Arc::default(),
            unauthenticated: Arc::default(),
            shared,
        });
        let mut pod = EnrolledPod {
            ctx,
            servers: Vec::new(),
        };
        match pod.serve(listeners) {
            Ok(()) => {
                let ctx = &pod.ctx;
                tracing::info!(pod = %ctx.key, ips = %ctx.workload.ips_text(), netns = %ctx.netns.path().display(), "pod enrolled");
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
        let ctx = &self.ctx;
        let cookie = ctx.netns_cookie;
        ctx.dataplane
            .set_listener(cookie, LISTENER_OUTBOUND, &l.outbound)?;
        ctx.dataplane
            .set_listener(cookie, LISTENER_INBOUND, &l.inbound)?;
        ctx.dataplane
            .set_listener(cookie, LISTENER_TUNNEL, &l.tunnel)?;
        self.servers.push(tokio::spawn(outbound::serve(
            TcpListener::from_std(l.outbound)?,
            ctx.clone(),
        )));
        self.servers.push(tokio::spawn(inbound::serve(
            TcpListener::from_std(l.inbound)?,
            ctx.clone(),
        )));
        self.servers.push(tokio::spawn(inbound::serve_tunnel(
            TcpListener::from_std(l.tunnel)?,
            ctx.clone(),
        )));
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
        let ctx = &self.ctx;
        ctx.dataplane.unenroll(ctx.netns_cookie);
        if let Err(e) = ctx.netns.run(pod_routing::remove).await {
            tracing::debug!(pod = %ctx.key, "remove pod routing: {e}");
        }
        tracing::info!(pod = %ctx.key, "pod unenrolled");
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

fn open_listeners() -> std::io::Result<Listeners> {
    Ok(Listeners {
        outbound: sockets::steered_listener()?,
        inbound: sockets::steered_listener()?,
        tunnel: sockets::steered_listener()?,
    })
}
