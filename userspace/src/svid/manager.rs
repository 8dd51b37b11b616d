//! SVID lifecycle: fetch on first use, refresh at half-life (with jitter), retry with
//! capped exponential backoff, serve the cached SVID through a CA outage until it expires,
//! drop it when the last pod of the identity leaves. The trust bundle and revocation list
//! are polled; an SVID whose serial is revoked is replaced at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

use super::{bundle::TrustBundle, client::CaClient, held::Svid};
use crate::metrics::METRICS;
use hawser_model::SpiffeId;

#[derive(Clone, Debug)]
pub struct SvidConfig {
    /// Lifetime asked of the CA (the CA may cap it); Istio's SECRET_TTL.
    pub ttl: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub bundle_interval: Duration,
}

impl Default for SvidConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 3600),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            bundle_interval: Duration::from_secs(30),
        }
    }
}

struct Entry {
    pods: usize,
    current: watch::Receiver<Option<Arc<Svid>>>,
    refresh_now: Arc<Notify>,
    task: JoinHandle<()>,
}

pub struct SvidManager {
    client: CaClient,
    config: SvidConfig,
    entries: Mutex<HashMap<SpiffeId, Entry>>,
    bundle: watch::Receiver<Arc<TrustBundle>>,
    bundle_task: JoinHandle<()>,
}

impl SvidManager {
    pub fn new(client: CaClient, config: SvidConfig) -> Arc<Self> {
        let (tx, bundle) = watch::channel(Arc::new(TrustBundle::default()));
        Arc::new_cyclic(|manager: &std::sync::Weak<SvidManager>| {
            let bundle_task = tokio::spawn(poll_bundle(
                client.clone(),
                config.bundle_interval,
                tx,
                manager.clone(),
            ));
            Self {
                client,
                config,
                entries: Mutex::new(HashMap::new()),
                bundle,
                bundle_task,
            }
        })
    }

    /// One more pod runs as `id`; the first one starts fetching its SVID.
    pub fn acquire(&self, id: &SpiffeId) -> watch::Receiver<Option<Arc<Svid>>> {
        let mut entries = self.entries.lock().unwrap();
        let entry = entries.entry(id.clone()).or_insert_with(|| {
            let (tx, current) = watch::channel(None);
            let refresh_now = Arc::new(Notify::new());
            let task = tokio::spawn(lifecycle(
                self.client.clone(),
                id.clone(),
                self.config.clone(),
                tx,
                refresh_now.clone(),
            ));
            Entry {
                pods: 0,
                current,
                refresh_now,
                task,
            }
        });
        entry.pods += 1;
        entry.current.clone()
    }

    /// One pod running as `id` left; the last one drops the SVID and its key.
    pub fn release(&self, id: &SpiffeId) {
        let mut entries = self.entries.lock().unwrap();
        if let Some(entry) = entries.get_mut(id) {
            entry.pods -= 1;
            if entry.pods == 0 {
                entry.task.abort();
                entries.remove(id);
                forget_expiry(id);
                tracing::info!(identity = %id, "SVID dropped: no pod of this identity is left on the node");
            }
        }
    }

    /// The SVID currently held for `id`, if any.
    pub fn svid(&self, id: &SpiffeId) -> Option<Arc<Svid>> {
        self.entries
            .lock()
            .unwrap()
            .get(id)
            .and_then(|e| e.current.borrow().clone())
    }

    /// Identities held, with the SVID of each (None while fetching or after expiry).
    pub fn held(&self) -> Vec<(SpiffeId, Option<Arc<Svid>>)> {
        let entries = self.entries.lock().unwrap();
        let mut held: Vec<_> = entries
            .iter()
            .map(|(id, e)| (id.clone(), e.current.borrow().clone()))
            .collect();
        held.sort_by(|a, b| a.0.cmp(&b.0));
        held
    }

    pub fn trust_bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle.clone()
    }

    /// Replaces at once every held SVID the bundle no longer vouches for: its serial is
    /// revoked, or its root left the bundle (a rotation finished before it was renewed).
    fn refresh_unusable(&self, bundle: &TrustBundle) {
        for entry in self.entries.lock().unwrap().values() {
            let unusable = entry.current.borrow().as_ref().is_some_and(|s| {
                bundle.revoked_serials.contains(&s.serial) || !s.chains_to(&bundle.roots)
            });
            if unusable {
                entry.refresh_now.notify_one();
            }
        }
    }
}

impl Drop for SvidManager {
    fn drop(&mut self) {
        self.bundle_task.abort();
        for entry in self.entries.lock().unwrap().values() {
            entry.task.abort();
        }
    }
}

/// Keeps one identity's SVID fresh for as long as the task lives.
async fn lifecycle(
    client: CaClient,
    id: SpiffeId,
    config: SvidConfig,
    tx: watch::Sender<Option<Arc<Svid>>>,
    refresh_now: Arc<Notify>,
) {
    let mut backoff = config.retry_min;
    loop {
        let wait = match client.fetch_svid(&id, config.ttl).await {
            Ok(svid) => {
                tracing::info!(identity = %id, serial = svid.serial, issuer = svid.issuer, not_after = %svid.not_after, "SVID issued");
                backoff = config.retry_min;
                expiry_gauge(&id).set(svid.not_after.unix_timestamp());
                let wait = svid.refresh_in();
                tx.send_replace(Some(svid));
                wait
            }
            Err(e) => {
                let cached = tx.borrow().clone();
                let wait = match &cached {
                    Some(svid) if svid.expired() => {
                        tracing::error!(identity = %id, serial = svid.serial, "SVID expired and the CA is unreachable: {e:#}");
                        tx.send_replace(None);
                        forget_expiry(&id);
                        backoff
                    }
                    // Retry, but wake up in time to drop the cached SVID at its expiry.
                    Some(svid) => backoff.min(svid.until_expiry() + Duration::from_millis(1)),
                    None => backoff,
                };
                tracing::warn!(identity = %id, retry_in_ms = wait.as_millis() as u64, serving_cached = cached.is_some_and(|s| !s.expired()), "SVID request failed: {e:#}");
                backoff = (backoff * 2).min(config.retry_max);
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = refresh_now.notified() => {
                tracing::warn!(identity = %id, "the held SVID is revoked; replacing it");
            }
        }
    }
}

fn expiry_gauge(id: &SpiffeId) -> prometheus::IntGauge {
    METRICS.svid_expiry.with_label_values(&[&id.to_string()])
}

fn forget_expiry(id: &SpiffeId) {
    let _ = METRICS.svid_expiry.remove_label_values(&[&id.to_string()]);
}

async fn poll_bundle(
    client: CaClient,
    interval: Duration,
    tx: watch::Sender<Arc<TrustBundle>>,
    manager: std::sync::Weak<SvidManager>,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        match client.trust_bundle().await {
            Ok(bundle) if **tx.borrow() != bundle => {
                tracing::info!(
                    roots = bundle.roots.len(),
                    revoked_serials = ?bundle.revoked_serials,
                    revoked_identities = ?bundle.revoked_identities,
                    federated = ?bundle.federated.keys().collect::<Vec<_>>(),
                    "trust bundle updated"
                );
                if let Some(manager) = manager.upgrade() {
                    manager.refresh_unusable(&bundle);
                }
                tx.send_replace(Arc::new(bundle));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("trust bundle poll failed, keeping the last one: {e:#}"),
        }
    }
}
