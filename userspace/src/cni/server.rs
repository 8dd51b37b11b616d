//! The daemon's side of the CNI hand-off: a Unix socket taking one request per
//! connection, the network namespaces pods were handed over with (kept in a state file,
//! so a restarted daemon enrolls running pods again), and the registry with those
//! namespaces filled in for workloads that declare none.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
};

use crate::context::{pod::PodContext, status::NodeStatus};
use hawser_model::Registry;
use hawser_model::cni::{Reply, Request};

/// How long the daemon waits for a handed-over pod to appear in its registry (the API
/// watch may trail the runtime) before answering that it is not in the mesh.
const UNKNOWN_POD_GRACE: Duration = Duration::from_secs(5);
/// The longest request line read.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long enrollment may take before the runtime hears it failed (and retries).
const ENROLL_TIMEOUT: Duration = Duration::from_secs(20);

/// A pod's sandbox as the runtime handed it over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handoff {
    pub container_id: String,
    pub netns: PathBuf,
    /// What the cluster's CNI plugin assigned, for pods the API server has no address
    /// for yet.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
}

/// By `namespace/name`.
pub type Handoffs = BTreeMap<String, Handoff>;

/// The hand-offs of an earlier run whose namespaces still exist.
pub fn load(state: &Path) -> Handoffs {
    let Ok(text) = std::fs::read_to_string(state) else {
        return Handoffs::new();
    };
    match serde_json::from_str::<Handoffs>(&text) {
        Ok(mut handoffs) => {
            handoffs.retain(|_, h| h.netns.exists());
            handoffs
        }
        Err(e) => {
            tracing::warn!(state = %state.display(), "CNI state unreadable, starting empty: {e}");
            Handoffs::new()
        }
    }
}

/// `source` with the handed-over namespaces (and addresses) filled in for this node's
/// workloads that have none of their own.
pub fn complete(
    mut source: watch::Receiver<Arc<Registry>>,
    mut handoffs: watch::Receiver<Handoffs>,
    node: String,
) -> watch::Receiver<Arc<Registry>> {
    let merge = move |registry: &Registry, handoffs: &Handoffs| {
        let mut merged = registry.clone();
        for w in merged.workloads.values_mut() {
            if w.node_name != node {
                continue;
            }
            let Some(handoff) = handoffs.get(&w.key()) else {
                continue;
            };
            if w.netns.is_none() {
                w.netns = Some(handoff.netns.clone());
            }
            if w.ips.is_empty() {
                w.ips = handoff.ips.clone();
            }
        }
        Arc::new(merged)
    };
    let (tx, rx) = watch::channel(merge(
        &source.borrow_and_update(),
        &handoffs.borrow_and_update(),
    ));
    tokio::spawn(async move {
        // Without a CNI socket nobody hands over namespaces: follow the source alone.
        let mut handing_over = true;
        loop {
            tokio::select! {
                r = source.changed() => if r.is_err() { return },
                r = handoffs.changed(), if handing_over => if r.is_err() {
                    handing_over = false;
                    continue;
                },
            }
            let merged = merge(&source.borrow_and_update(), &handoffs.borrow_and_update());
            tx.send_if_modified(|current| {
                let changed = *current != merged;
                *current = merged;
                changed
            });
        }
    });
    rx
}

pub struct Server {
    pub handoffs: watch::Sender<Handoffs>,
    pub state: PathBuf,
    pub registry: watch::Receiver<Arc<Registry>>,
    pub status: watch::Receiver<NodeStatus>,
    pub node: String,
}

impl Server {
    /// Listens on `socket` (replacing a stale one) and serves until the daemon ends.
    pub fn serve(self, socket: &Path) -> Result<()> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket)
            .with_context(|| format!("listen on the CNI socket {}", socket.display()))?;
        tracing::info!(socket = %socket.display(), "CNI hand-off socket listening");
        // A daemon taking over from a running one read the state at its start; the hand-offs
        // that daemon took until now are in the file too.
        let since = load(&self.state);
        self.handoffs.send_if_modified(|handoffs| {
            let known = handoffs.len();
            for (pod, handoff) in since {
                handoffs.entry(pod).or_insert(handoff);
            }
            handoffs.len() > known
        });
        let server = Arc::new(self);
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, _)) => {
                        let server = server.clone();
                        tokio::spawn(async move { server.handle(conn).await });
                    }
                    Err(e) => {
                        tracing::warn!("CNI socket accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(())
    }

    async fn handle(&self, conn: UnixStream) {
        let (read, mut write) = conn.into_split();
        let mut line = String::new();
        // A request is a few hundred bytes; more is not a request.
        let reply = match BufReader::new(read.take(MAX_REQUEST))
            .read_line(&mut line)
            .await
        {
            Ok(_) => match Request::parse(&line) {
                Ok(request) => self.answer(request).await,
                Err(reason) => Reply::Failed { reason },
            },
            Err(e) => Reply::Failed {
                reason: format!("read: {e}"),
            },
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_default();
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }

    async fn answer(&self, request: Request) -> Reply {
        match request {
            Request::Add {
                namespace,
                name,
                container_id,
                netns,
                ips,
            } => {
                let key = format!("{namespace}/{name}");
                tracing::info!(pod = %key, netns = %netns.display(), ?ips, "CNI ADD");
                self.update(|h| {
                    let netns = netns.clone();
                    h.insert(
                        key.clone(),
                        Handoff {
                            container_id,
                            netns,
                            ips,
                        },
                    );
                });
                self.enrolled(&key, &netns).await
            }
            Request::Del { container_id } => {
                self.update(|h| h.retain(|_, v| v.container_id != container_id));
                tracing::info!(container = %container_id, "CNI DEL");
                Reply::Ok
            }
        }
    }

    /// Records a change and persists the whole set.
    fn update(&self, change: impl FnOnce(&mut Handoffs)) {
        self.handoffs.send_modify(change);
        let text = serde_json::to_string_pretty(&*self.handoffs.borrow()).unwrap_or_default();
        let tmp = self.state.with_extension("tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &self.state));
        if let Err(e) = written {
            tracing::error!(state = %self.state.display(), "CNI state not saved: {e}");
        }
    }

    /// Waits until `key` is enrolled in `netns`, fails, or turns out not to be in the
    /// mesh.
    async fn enrolled(&self, key: &str, netns: &Path) -> Reply {
        let (mut registry, mut status) = (self.registry.clone(), self.status.clone());
        let started = tokio::time::Instant::now();
        loop {
            let known = registry
                .borrow_and_update()
                .workloads
                .get(key)
                .is_some_and(|w| w.node_name == self.node);
            let node = status.borrow_and_update().clone();
            let current = |p: &&Arc<PodContext>| p.workload.netns.as_deref() == Some(netns);
            if node.pods.iter().filter(current).any(|p| p.key == key) {
                return Reply::Enrolled;
            }
            if let Some(why) = node.failing.iter().find(|f| f.as_str() == key) {
                return Reply::Failed {
                    reason: format!("enrolling {why} failed (see the daemon's log)"),
                };
            }
            let waited = started.elapsed();
            if !known && waited > UNKNOWN_POD_GRACE {
                return Reply::NotInMesh;
            }
            if waited > ENROLL_TIMEOUT {
                return Reply::Failed {
                    reason: "enrollment timed out".into(),
                };
            }
            tokio::select! {
                _ = registry.changed() => {}
                _ = status.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}
