//! The node daemon: follows the workload source and keeps the node's pods enrolled.
//! `start` brings it up on the caller's (control) runtime with its listeners and
//! connections on the data-plane runtime it is given, and returns a handle to stop it.

mod passing;
pub mod pod;
pub mod takeover;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use tokio::{runtime::Handle, sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    admin::{self, server::Admin},
    cni,
    context::{drain::Drain, handoff::Handed, shared::Shared, status::NodeStatus},
    credentials::{CredentialRoots, Credentials},
    egress::dns,
    logging::LogLevel,
    metrics::METRICS,
    proxy::{self, sockets::Keepalive},
    redirect::Dataplane,
    svid::{CaClient, CaClientConfig, SvidConfig, SvidManager},
    tls::offload::{Offload, TlsPath},
    workload,
};
use hawser_model::{Registry, Workload, egress::OutboundPolicy};
use pod::EnrolledPod;

pub struct NodeConfig {
    pub node_name: String,
    /// The admin API (keep it on localhost: it changes the log level).
    pub admin_addr: std::net::SocketAddr,
    /// Where Prometheus scrapes `/metrics`.
    pub metrics_addr: std::net::SocketAddr,
    /// How long the metric series of a workload that left stay.
    pub series_grace: Duration,
    pub log_level: LogLevel,
    pub source: workload::Source,
    pub pin_dir: PathBuf,
    pub cgroup: PathBuf,
    /// Where `credentialName` directories live.
    pub credentials_dir: PathBuf,
    /// Where certificate file paths may point.
    pub credential_roots: CredentialRoots,
    pub outbound_policy: OutboundPolicy,
    /// Where the CNI plugin hands over pods' network namespaces; None: no hand-offs
    /// (workloads declare their namespace).
    pub cni_socket: Option<PathBuf>,
    /// The name server for `resolution: DNS` ServiceEntries; None: the system's.
    pub dns_server: Option<std::net::SocketAddr>,
    /// Whether tunnels may offload to kernel TLS (off: always rustls in userspace).
    pub kernel_tls: bool,
    /// The most records a kernel-TLS socket may send under one key (below the cipher's
    /// own limit, which always applies).
    pub tls_records_per_key: u64,
    /// Whether tunnel sessions carry a pair's connections one after another where they
    /// stay in userspace (`--tunnel-reuse`).
    pub tunnel_reuse: bool,
    /// Keep-alive probing of relayed connections.
    pub keepalive: Keepalive,
    /// How long open connections may run on after SIGTERM before they are cut.
    pub drain: Duration,
    /// What the process does once a new daemon took over and the drain is over.
    pub after_handover: AfterHandover,
    /// Where identities come from; without it the daemon relays without identities.
    pub ca: Option<CaSettings>,
}

/// What a daemon does once a new one took over from it and its drain is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AfterHandover {
    /// Exit (a process started by hand or by a supervisor that does not restart it).
    Exit,
    /// Stay, idle, until SIGTERM: a container that exited would be restarted by the
    /// kubelet and take over back; the DaemonSet controller stops it instead.
    Wait,
}

pub struct CaSettings {
    pub address: String,
    pub root_pem: String,
    pub server_name: String,
    /// The node credential's file (re-read for every CA request).
    pub token_file: PathBuf,
    pub trust_domain: String,
    pub svid: SvidConfig,
}

/// Pods this daemon has enrolled, by `namespace/name`.
type Pods = BTreeMap<String, EnrolledPod>;

/// Configured pods whose enrollment failed, with the cookie of the namespace they are
/// held closed in (when it could be captured).
type Closed = BTreeMap<String, Option<u64>>;

/// A running node daemon.
pub struct Bound {
    /// Where the admin API and the metrics listen.
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    shutdown: CancellationToken,
    /// Cancelled when the daemon has ended (shut down, or its workload source ended).
    ended: CancellationToken,
    /// Cancelled when a new daemon took over from this one.
    handed_over: CancellationToken,
    running: JoinHandle<()>,
}

impl Bound {
    /// Stops accepting and drains (see `context::drain`); `wait` sees the end.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Whether a new daemon took over from this one (see `takeover`).
    pub fn handed_over(&self) -> bool {
        self.handed_over.is_cancelled()
    }

    /// Once the daemon has ended on its own (a take-over, or its workload source ended).
    pub async fn ended(&self) {
        self.ended.cancelled().await
    }

    /// Until the daemon has shut down (or its workload source ended).
    pub async fn wait(self) -> Result<()> {
        Ok(self.running.await?)
    }
}

/// Brings the daemon up: eBPF, sources, identities, the admin API, the first
/// reconcile; then follows changes in a task of the calling runtime. Listeners and
/// relayed connections run on `data`.
pub async fn start(config: NodeConfig, data: Handle) -> Result<Bound> {
    raise_open_files_limit();
    let (succession, previous) = takeover::claim(&config.pin_dir).await?;
    let shutdown = succession.shutdown.clone();
    let dataplane = Arc::new(Dataplane::load(&config.pin_dir, &config.cgroup)?);
    // A cold start: no daemon is delivering, so each pass left is a dead daemon's.
    if previous.is_none() {
        dataplane.forget_all_deliveries();
    }
    let source = workload::start(&config.source).await?;
    let cni_state = config
        .cni_socket
        .as_ref()
        .map(|s| s.with_file_name("cni-pods.json"));
    let (handoffs_tx, handoffs) = watch::channel(
        cni_state
            .as_deref()
            .map(cni::server::load)
            .unwrap_or_default(),
    );
    let mut registry = cni::server::complete(source, handoffs, config.node_name.clone());
    if config.ca.is_none() {
        tracing::warn!(
            "no CA configured: pods have no identities and traffic is relayed without mTLS"
        );
    }
    let offload = match config.ca {
        Some(_) if config.kernel_tls => Offload::probe(config.tls_records_per_key).await,
        Some(_) => {
            tracing::info!("kernel TLS disabled (--no-ktls); tunnels use userspace TLS");
            Offload::userspace(config.tls_records_per_key)
        }
        None => Offload::userspace(config.tls_records_per_key),
    };
    let serial_tunnels = config.tunnel_reuse && offload.path() == TlsPath::Userspace;
    if config.tunnel_reuse && !serial_tunnels {
        tracing::info!("--tunnel-reuse: off, tunnels offload to kernel TLS (one per connection)");
    }
    let shared = Arc::new(Shared {
        node_name: config.node_name.clone(),
        svids: config.ca.as_ref().map(start_svid_manager).transpose()?,
        trust_domain: config
            .ca
            .as_ref()
            .map_or("cluster.local".into(), |ca| ca.trust_domain.clone()),
        registry: registry.clone(),
        offload,
        serial_tunnels,
        credentials: Credentials::new(
            config.credentials_dir.clone(),
            config.credential_roots.clone(),
        ),
        outbound_policy: config.outbound_policy,
        resolved: dns::follow(dns::resolver(config.dns_server)?, registry.clone()),
        originated: Arc::default(),
        keepalive: config.keepalive,
        drain: Drain::new(data),
        handoff: succession.handoff.clone(),
    });
    let (status_tx, status) = watch::channel(NodeStatus::default());
    if let (Some(socket), Some(state)) = (&config.cni_socket, cni_state) {
        cni::server::Server {
            handoffs: handoffs_tx,
            state,
            registry: registry.clone(),
            status: status.clone(),
            node: config.node_name.clone(),
        }
        .serve(socket)?;
    }
    let (admin, metrics) = admin::server::serve(
        config.admin_addr,
        config.metrics_addr,
        Admin {
            shared: shared.clone(),
            dataplane: dataplane.clone(),
            status,
            log_level: config.log_level.clone(),
            started: Instant::now(),
            series_grace: config.series_grace,
            successor: succession.successor.clone(),
        },
        shutdown.clone(),
    )
    .await?;
    let mut node = Reconciler {
        name: config.node_name.clone(),
        pods: Pods::new(),
        closed: Closed::new(),
        shared,
        dataplane,
        status: status_tx,
    };
    let snapshot = registry.borrow_and_update().clone();
    let pending = node.reconcile(&snapshot).await;
    // Pruning releases pods this daemon does not know of: never those a running daemon
    // may have enrolled since this one read its state (that would let them around the
    // mesh). A cold start has no such daemon.
    if previous.is_none() {
        prune_earlier_runs(&node.dataplane, &node.pods, &node.closed);
    }
    let pods = &node.pods;
    let adopt = |handed: Handed| match pods.get(&handed.meta.pod) {
        Some(pod) => proxy::adopt::adopt(pod.ctx.clone(), handed),
        None => handed.abort(),
    };
    if let Some(previous) = previous {
        if config.ca.is_some() {
            credentials_ready(&node.pods).await;
        }
        if let Err(e) = previous.take_over(&succession, adopt).await {
            tracing::warn!("taking over from the previous daemon: {e:#}");
        }
    }
    tracing::info!(node = %node.name, pods = node.pods.len(), "node ready");
    let ended = CancellationToken::new();
    let handed_over = succession.handed_over.clone();
    let following = node.follow(
        registry,
        pending,
        shutdown.clone(),
        handed_over,
        config.drain,
    );
    let done = ended.clone().drop_guard();
    let running = tokio::spawn(async move {
        following.await;
        drop(done);
    });
    Ok(Bound {
        admin,
        metrics,
        shutdown,
        ended,
        handed_over: succession.handed_over,
        running,
    })
}

/// Waits for every enrolled pod's SVID and the trust bundle (up to `SVID_WAIT`), before
/// taking over: a connection handed over is admitted against this daemon's bundle, and
/// new ones need the pods' SVIDs, so taking over without them would cut the one and
/// refuse the others while the running daemon could still serve both.
async fn credentials_ready(pods: &Pods) {
    let waits = pods.values().map(|pod| pod.ctx.credentials_soon());
    let missing = futures::future::join_all(waits)
        .await
        .iter()
        .filter(|held| held.is_err())
        .count();
    if missing > 0 {
        tracing::warn!(
            pods = missing,
            "taking over without the SVID or trust bundle of some pods"
        );
    }
}

/// How long a daemon taken over keeps accepting what was steered to it before the
/// successor enrolled the pods (at most a handshake's round trip on the node).
const HANDOVER_GRACE: Duration = Duration::from_millis(250);

/// The reconcile loop's state.
struct Reconciler {
    name: String,
    pods: Pods,
    closed: Closed,
    shared: Arc<Shared>,
    dataplane: Arc<Dataplane>,
    status: watch::Sender<NodeStatus>,
}

impl Reconciler {
    /// Follows the registry, the trust bundle and failed enrollments until `shutdown`,
    /// then drains for `drain`.
    async fn follow(
        mut self,
        mut registry: watch::Receiver<Arc<Registry>>,
        mut pending: bool,
        shutdown: CancellationToken,
        handed_over: CancellationToken,
        drain: Duration,
    ) {
        let mut retry = tokio::time::interval(Duration::from_secs(2));
        let mut bundle = self.shared.svids.as_ref().map(|svids| svids.trust_bundle());
        loop {
            tokio::select! {
                changed = registry.changed() => {
                    if changed.is_err() { break; }
                    let snapshot = registry.borrow_and_update().clone();
                    pending = self.reconcile(&snapshot).await;
                    recheck(&self.pods);
                }
                // Roots and revocations: open connections are checked against them too.
                Ok(()) = bundle_changed(&mut bundle) => recheck(&self.pods),
                _ = retry.tick(), if pending => {
                    let snapshot = registry.borrow().clone();
                    pending = self.reconcile(&snapshot).await;
                }
                _ = shutdown.cancelled() => break,
            }
        }
        if handed_over.is_cancelled() {
            // The successor's listeners take new connections since it enrolled the pods,
            // but one steered here just before may still wait in these listeners' queues:
            // closing them now would reset it.
            tokio::time::sleep(HANDOVER_GRACE).await;
        }
        self.shut_down(drain, registry, bundle).await;
    }

    /// Brings the enrolled set in line with the workloads on this node, and publishes it.
    /// Returns whether some enrollment failed and should be retried. Only a pod that left the
    /// workload source is released; one whose enrollment fails stays closed.
    async fn reconcile(&mut self, registry: &Registry) -> bool {
        let Reconciler {
            name: node,
            pods,
            closed,
            shared,
            dataplane,
            status,
        } = self;
        // A pod whose namespace the CNI plugin has not handed over yet has not started.
        let desired: BTreeMap<String, &Workload> = registry
            .on_node(node)
            .filter(|w| w.netns.is_some())
            .map(|w| (w.key(), w))
            .collect();
        let stale: Vec<String> = pods
            .iter()
            .filter(|(key, pod)| desired.get(*key) != Some(&&pod.ctx.workload))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            let Some(pod) = pods.remove(&key) else {
                continue;
            };
            // Same pod, same namespace, new settings: re-enrolled below without a release.
            let same_netns = desired
                .get(&key)
                .is_some_and(|w| w.netns == pod.ctx.workload.netns);
            if same_netns {
                pod.retire();
            } else {
                pod.unenroll().await;
            }
        }
        closed.retain(|key, cookie| {
            if desired.contains_key(key) {
                return true;
            }
            if let Some(cookie) = cookie {
                tracing::info!(pod = %key, "releasing a pod that left the workload source");
                dataplane.unenroll(*cookie);
            }
            false
        });
        for (key, workload) in desired {
            if pods.contains_key(&key) {
                continue;
            }
            match EnrolledPod::enroll(workload.clone(), shared.clone(), dataplane).await {
                Ok(pod) => {
                    closed.remove(&key);
                    pods.insert(key, pod);
                }
                Err(failed) => {
                    let state = if failed.netns_cookie.is_some() {
                        "held closed"
                    } else {
                        "not capturable yet"
                    };
                    tracing::error!(pod = %key, "enrollment failed ({state}), will retry: {:#}", failed.error);
                    let known = closed.get(&key).copied().flatten();
                    closed.insert(key, failed.netns_cookie.or(known));
                }
            }
        }
        // Metric series may name this node's enrolled pods and the mesh's other workloads.
        let present = pods
            .keys()
            .cloned()
            .chain(
                registry
                    .workloads
                    .values()
                    .filter(|w| w.node_name != *node)
                    .map(Workload::key),
            )
            .collect();
        METRICS.workloads_present(&present);
        METRICS.unenforceable(&registry.policies);
        let pending = !closed.is_empty();
        status.send_replace(NodeStatus {
            pods: pods.values().map(|p| p.ctx.clone()).collect(),
            reconciled: true,
            failing: closed.keys().cloned().collect(),
        });
        pending
    }

    /// Stops accepting and drains for `drain`. The connections still open keep being
    /// checked against policy and the bundle meanwhile: a deny or revocation during the
    /// drain cuts them as it would before.
    async fn shut_down(
        self,
        drain: Duration,
        mut registry: watch::Receiver<Arc<Registry>>,
        mut bundle: Option<watch::Receiver<Arc<crate::svid::TrustBundle>>>,
    ) {
        // Pins stay: enrolled pods keep being steered to listeners that are now gone, so their
        // new connections fail until a daemon is back.
        tracing::info!(
            "shutting down; enrolled pods stay captured (fail closed) until a daemon serves them"
        );
        for pod in self.pods.values() {
            pod.stop_accepting();
        }
        let checking = async {
            loop {
                tokio::select! {
                    Ok(()) = registry.changed() => recheck(&self.pods),
                    Ok(()) = bundle_changed(&mut bundle) => recheck(&self.pods),
                    else => std::future::pending::<()>().await,
                }
            }
        };
        tokio::select! {
            () = self.shared.drain.finish(drain) => {}
            () = checking => {}
        }
    }
}

/// Every relayed connection holds two or three descriptors: at the usual soft limit of
/// 1024, a few hundred idle connections would starve real traffic, the CA poll and the
/// config reload. The hard limit is what the operator granted.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let e = std::io::Error::last_os_error();
        return tracing::warn!("cannot read the open files limit: {e}");
    }
    let soft = limit.rlim_cur;
    if soft >= limit.rlim_max {
        return;
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: a valid rlimit.
    match unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } {
        0 => tracing::info!(
            from = soft,
            to = limit.rlim_max,
            "open files limit raised to the hard limit"
        ),
        _ => {
            let e = std::io::Error::last_os_error();
            tracing::warn!(limit = soft, "cannot raise the open files limit: {e}");
        }
    }
}

/// Applies a change to open connections: each pod cuts those no longer allowed.
fn recheck(pods: &Pods) {
    for pod in pods.values() {
        pod.ctx.recheck();
    }
}

/// The next change of the trust bundle; never without a CA.
async fn bundle_changed(
    bundle: &mut Option<watch::Receiver<Arc<crate::svid::TrustBundle>>>,
) -> Result<(), watch::error::RecvError> {
    match bundle {
        Some(bundle) => bundle.changed().await,
        None => std::future::pending().await,
    }
}

/// Releases eBPF state left by an earlier run for pods that are no longer configured.
/// Pods that are configured stay captured, closed if enrolling them failed.
fn prune_earlier_runs(dataplane: &Dataplane, pods: &Pods, closed: &Closed) {
    let keep: Vec<u64> = pods
        .values()
        .map(EnrolledPod::netns_cookie)
        .chain(closed.values().flatten().copied())
        .collect();
    dataplane.prune(&keep);
}

fn start_svid_manager(ca: &CaSettings) -> Result<Arc<SvidManager>> {
    let client = CaClient::new(&CaClientConfig {
        address: ca.address.clone(),
        root_pem: ca.root_pem.clone(),
        server_name: ca.server_name.clone(),
        token_file: ca.token_file.clone(),
    })?;
    Ok(SvidManager::new(client, ca.svid.clone()))
}
